/**
 * Several locks in one call: taken in one global order (so two callers wanting overlapping sets
 * cannot deadlock), released together, lost together.
 */
import { invalidArgType, invalidArgValue, LockTimeoutError, SuppressedError } from './errors'
import type { Handle, LockHandle } from './handle'
import type { DistributedLock } from './locks'
import { checkName, checkOptions, typeName, type AcquireOptions } from './options'

/** Options of `acquireAll` and `tryAcquireAll`. */
export interface AcquireAllOptions extends AcquireOptions {}

/** Several held locks, as a type: what {@link MultiLockHandle} offers. */
export interface MultiHandle extends AsyncDisposable {
  /** The locks' handles, in the order they were taken. */
  readonly handles: readonly Handle[]
  /** The names, in the order they were taken. */
  readonly names: string[]
  /** Aborts when any of the locks is lost; its reason is that loss's `LockLostError`. */
  readonly signal: AbortSignal
  /** Whether every one of the locks is held right now. */
  readonly isHeld: boolean
  /** Whether the locks have been released. */
  readonly isReleased: boolean
  /** Throws the `LockLostError` of the first lock that is not held; returns when all are. */
  assertHeld(): void
  /** Sets every lock's lease to `ms` from now. */
  extend(ms: number): Promise<void>
  /** Releases every lock; idempotent. */
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

  /** Throws the `LockLostError` of the first lock that is not held (see `LockHandle.assertHeld`). */
  assertHeld(): void {
    for (const h of this.handles) h.assertHeld()
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

  /** Releases the locks at the end of an `await using` block. */
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

/** How `acquireAll` takes its locks. */
export type AcquireAllStrategy =
  /** One after another in the names' order, waiting for each while holding the earlier ones. */
  | 'ordered'
  /**
   * All at once: one attempt at every lock in the same round (one round trip per server), kept
   * only if every one was granted, else all given back; between rounds it waits for one busy
   * lock, holding nothing else, and tries the rest with it. For RedLock.
   */
  | 'together'

/**
 * Takes the locks `createLock(name)` for every name within one budget: `timeoutMs` bounds the
 * whole call, and `signal` cancels it. If they cannot all be had, those already taken are
 * released and the call rejects (or, for a try, resolves to `null`). Both strategies are free
 * of deadlock: `ordered` waits only in one global order, `together` never waits while holding
 * more than the one lock it waited for.
 * @internal
 */
export async function acquireAll(
  createLock: (name: string) => DistributedLock,
  names: unknown,
  options: unknown,
  tryOnly: boolean,
  strategy: AcquireAllStrategy = 'ordered',
): Promise<MultiLockHandle | null> {
  const ordered = orderedNames(names)
  const opts: AcquireAllOptions = checkOptions(options)
  const locks = ordered.map(createLock)
  const timeoutMs = opts.timeoutMs ?? (tryOnly ? 0 : undefined)
  const deadline = timeoutMs === undefined ? undefined : performance.now() + timeoutMs
  // What is left of the budget (a try makes one attempt: 0).
  const left = () =>
    deadline === undefined ? Infinity : timeoutMs === 0 ? 0 : Math.max(0, deadline - performance.now())
  const attempt = (lock: DistributedLock, ms: number) =>
    lock.tryAcquire({
      timeoutMs: ms,
      signal: opts.signal,
      leaseMs: opts.leaseMs,
      autoRenew: opts.autoRenew,
      maxHoldMs: opts.maxHoldMs,
    })
  const timedOut = (name: string, nth: number) => {
    if (tryOnly) return null
    throw new LockTimeoutError(
      `Timed out after ${timeoutMs} ms waiting for lock ${JSON.stringify(name)} (${nth} of ${ordered.length} in acquireAll)`,
    )
  }
  const taken: LockHandle[] = []
  try {
    if (strategy === 'ordered') {
      for (const lock of locks) {
        const handle = await attempt(lock, left())
        if (!handle) {
          const nth = taken.length + 1
          await releaseAll(taken.splice(0))
          return timedOut(lock.name, nth)
        }
        taken.push(handle)
      }
      return new MultiLockHandle(taken)
    }
    for (;;) {
      // One round: an attempt at every lock not held yet, all sent before any answer is read.
      const held = taken.splice(0)
      const round = await Promise.allSettled(
        locks.map((lock) => held.find((h) => h.name === lock.name) ?? attempt(lock, 0)),
      )
      const got = round.flatMap((r) => (r.status === 'fulfilled' && r.value ? [r.value] : []))
      const failed = round.find((r) => r.status === 'rejected')
      if (failed) {
        taken.push(...got)
        throw failed.reason
      }
      if (got.length === locks.length) return new MultiLockHandle(got)
      const busy = locks[round.findIndex((r) => r.status === 'fulfilled' && !r.value)]!
      await releaseAll(got)
      // Wait for one busy lock (woken by its release, not by polling), then try the rest with it.
      const waited = left() > 0 ? await attempt(busy, left()) : null
      if (!waited) return timedOut(busy.name, locks.indexOf(busy) + 1)
      taken.push(waited)
    }
  } catch (err) {
    try {
      await releaseAll(taken)
    } catch (releaseErr) {
      throw new SuppressedError(err, releaseErr, 'acquireAll failed, and releasing the locks it had taken failed too')
    }
    throw err
  }
}
