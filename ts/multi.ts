/**
 * Several locks in one call: taken in one global order (so two callers wanting overlapping sets
 * cannot deadlock), released together, lost together.
 */
import { invalidArgType, invalidArgValue, LockTimeoutError, SuppressedError } from './errors'
import {
  checkName,
  checkOptions,
  typeName,
  type AcquireOptions,
  type DistributedLock,
  type Handle,
  type LockHandle,
} from './locks'

/** Options of `acquireAll` and `tryAcquireAll`. */
export interface AcquireAllOptions extends AcquireOptions {}

/** Several held locks, as a type: what {@link MultiLockHandle} offers. */
export interface MultiHandle extends AsyncDisposable {
  readonly handles: readonly Handle[]
  readonly names: string[]
  readonly signal: AbortSignal
  readonly isHeld: boolean
  readonly isReleased: boolean
  extend(ms: number): Promise<void>
  release(): Promise<void>
}

/**
 * The handle of several locks taken together. Releasing it releases them all; its `signal`
 * aborts when any of them is lost.
 */
export class MultiLockHandle implements MultiHandle {
  /** The locks' handles, in the order they were taken (the names' UTF-8 byte order). */
  readonly handles: readonly LockHandle[]
  #signal: AbortSignal | undefined

  /** @internal */
  constructor(handles: LockHandle[]) {
    this.handles = Object.freeze(handles)
  }

  /** The names, in the order they were taken. */
  get names(): string[] {
    return this.handles.map((h) => h.name)
  }

  /** Aborts, with the first loss's `LockLostError` as its reason, when any of the locks is lost. */
  get signal(): AbortSignal {
    this.#signal ??= AbortSignal.any(this.handles.map((h) => h.signal))
    return this.#signal
  }

  /** Whether every one of the locks is held right now (see `LockHandle.isHeld`). */
  get isHeld(): boolean {
    return this.handles.every((h) => h.isHeld)
  }

  /** Whether the locks have been released. */
  get isReleased(): boolean {
    return this.handles.every((h) => h.isReleased)
  }

  /** Sets every lock's lease to `ms` from now (see `LockHandle.extend`). */
  async extend(ms: number): Promise<void> {
    await Promise.all(this.handles.map((h) => h.extend(ms)))
  }

  /**
   * Releases every lock, in the reverse order of taking them; idempotent. All are released even
   * if one fails; the first failure is then thrown.
   */
  async release(): Promise<void> {
    await releaseAll(this.handles)
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release()
  }
}

/** Releases `handles` in reverse, all of them; rejects with the first failure. */
async function releaseAll(handles: readonly LockHandle[]): Promise<void> {
  let failure: { error: unknown } | undefined
  for (const h of handles.toReversed()) {
    try {
      await h.release()
    } catch (error) {
      failure ??= { error }
    }
  }
  if (failure) throw failure.error
}

const utf8 = (s: string) => Buffer.from(s, 'utf8')

/** Checks `names` and returns them distinct, in UTF-8 byte order. */
function orderedNames(names: unknown): string[] {
  if (!Array.isArray(names)) {
    throw invalidArgType(`The "names" argument must be an array of strings. Received ${typeName(names)}`)
  }
  if (names.length === 0) throw invalidArgValue('The "names" argument must not be empty')
  const checked = names.map((n) => checkName(n))
  const sorted = checked.toSorted((a, b) => Buffer.compare(utf8(a), utf8(b)))
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i] === sorted[i - 1]) {
      // Locks are not reentrant: taking a name twice would wait for itself forever.
      throw invalidArgValue(`The "names" argument lists ${JSON.stringify(sorted[i])} twice`)
    }
  }
  return sorted
}

/**
 * Takes the locks `createLock(name)` for every name, in UTF-8 byte order, within one budget:
 * `timeoutMs` bounds the whole call, and `signal` cancels it. If any cannot be had, those
 * already taken are released and the call rejects (or, for a try, resolves to `null`).
 * @internal
 */
export async function acquireAll(
  createLock: (name: string) => DistributedLock,
  names: unknown,
  options: unknown,
  tryOnly: boolean,
): Promise<MultiLockHandle | null> {
  const ordered = orderedNames(names)
  const opts: AcquireAllOptions = checkOptions(options)
  const locks = ordered.map(createLock)
  const timeoutMs = opts.timeoutMs ?? (tryOnly ? 0 : undefined)
  const deadline = timeoutMs === undefined ? undefined : performance.now() + timeoutMs
  const taken: LockHandle[] = []
  try {
    for (const lock of locks) {
      // Every lock gets what is left of the budget; a try makes one attempt at each.
      const left = deadline === undefined ? undefined : timeoutMs === 0 ? 0 : Math.max(0, deadline - performance.now())
      const handle = await lock.tryAcquire({
        timeoutMs: left ?? Infinity,
        signal: opts.signal,
        leaseMs: opts.leaseMs,
        autoRenew: opts.autoRenew,
        maxHoldMs: opts.maxHoldMs,
      })
      if (!handle) {
        if (tryOnly) {
          await releaseAll(taken)
          return null
        }
        throw new LockTimeoutError(
          `Timed out after ${timeoutMs} ms waiting for lock ${JSON.stringify(lock.name)} (${taken.length + 1} of ${ordered.length} in acquireAll)`,
        )
      }
      taken.push(handle)
    }
  } catch (err) {
    try {
      await releaseAll(taken)
    } catch (releaseErr) {
      throw new SuppressedError(err, releaseErr, 'acquireAll failed, and releasing the locks it had taken failed too')
    }
    throw err
  }
  return new MultiLockHandle(taken)
}
