/** A held lock: {@link LockHandle}, and running work while one is held ({@link withHeld}). */
import { inspect } from 'node:util'

import {
  extendChannel,
  lostChannel,
  releaseChannel,
  type ExtendTrace,
  type LostMessage,
  type ReleaseTrace,
} from './diagnostics'
import type { NativeHandle } from './native'
import { LockLostError, LockStateError, SuppressedError, invalidArgType, toLockError } from './errors'
import { typeName, type LockKind } from './options'
import type { LockSource, Settler } from './settle'

/**
 * A held lock, as a type: what {@link LockHandle} offers. Code that takes handles can ask for
 * this, so a test can pass a hand-written fake.
 */
export interface Handle extends AsyncDisposable {
  /** The lock's name. */
  readonly name: string
  /** The backend that granted it: `file`, `postgres`, `redis` or `memory`. */
  readonly backend: string
  /** What was acquired: `mutex`, `read`, `write` or `semaphore`. */
  readonly kind: LockKind
  /** How many of a semaphore's permits this grant holds; 1 for every other kind. */
  readonly permits: number
  /** Aborts, with a {@link LockLostError} as its reason, the moment the lock is known to be lost. */
  readonly signal: AbortSignal
  /** Strictly greater than the token of every earlier grant of the same name. */
  readonly fencingToken: bigint
  /** Whether the lock is held right now, as far as this process can tell without a round trip. */
  readonly isHeld: boolean
  /** Whether the lock has been released. */
  readonly isReleased: boolean
  /**
   * Throws {@link LockLostError} at once when `isHeld` is false: the check before each step of
   * the work the lock protects.
   */
  assertHeld(): void
  /** How long the lease has left, in ms; `null` where locks have no lease and once released. */
  readonly leaseRemainingMs: number | null
  /** Sets the lease to `ms` from now; rejects with {@link LockLostError} if the lock is lost. */
  extend(ms: number): Promise<void>
  /** Releases the lock; idempotent. */
  release(): Promise<void>
}

/** The native handle behind a {@link LockHandle}, for the CLI's spawn. @internal */
export let nativeHandleOf: (handle: LockHandle) => NativeHandle

/**
 * A held lock. Release it with {@link LockHandle.release} or, better, `await using`. A handle
 * that is garbage-collected without release is released as a safety net.
 */
export class LockHandle implements Handle {
  static {
    nativeHandleOf = (handle) => handle.#native
  }

  /** The lock's name. */
  readonly name: string
  /** The backend that granted it: `file`, `postgres`, `redis` or `memory`. */
  readonly backend: string
  /** What was acquired: `mutex`, `read` or `write` (a reader-writer lock), or `semaphore`. */
  readonly kind: LockKind
  /** How many of a semaphore's permits this grant holds; 1 for every other kind. */
  readonly permits: number
  readonly #native: NativeHandle
  readonly #what: string
  readonly #settler: Settler
  readonly #grantedAt = performance.now()
  #holdTimer: NodeJS.Timeout | undefined
  #controller: AbortController | undefined
  readonly #watched: Set<WeakRef<{ syncLost(): void }>> | undefined
  #ref: WeakRef<LockHandle> | undefined

  /** @internal */
  constructor(
    nativeHandle: NativeHandle,
    name: string,
    kind: LockKind,
    source: LockSource,
    what: string,
    maxHoldMs?: number,
    permits = 1,
  ) {
    this.#native = nativeHandle
    this.name = name
    this.backend = source.backend
    this.kind = kind
    this.permits = permits
    this.#what = what
    this.#settler = source.settler
    this.#watched = source.watched
    if (maxHoldMs !== undefined) {
      // Holds the handle until then (so until then it is not released by garbage collection).
      this.#holdTimer = setTimeout(() => {
        nativeHandle.expire(`it was held for its maxHoldMs (${maxHoldMs} ms)`)
        this.release().catch(() => {})
      }, maxHoldMs).unref()
    }
    if (lostChannel.hasSubscribers) {
      // Primitives only: the callback must not keep the handle from garbage collection.
      const { backend, fencingToken } = { backend: source.backend, fencingToken: nativeHandle.fencingToken }
      const grantedAt = this.#grantedAt
      nativeHandle.onLost((reason) => {
        const message: LostMessage = {
          name,
          backend,
          kind,
          fencingToken,
          reason,
          heldMs: performance.now() - grantedAt,
        }
        lostChannel.publish(message)
      })
    }
  }

  /**
   * Aborts, with a {@link LockLostError} as its reason, the moment the lock is known to be lost
   * (lease expired, session dropped, provider closed). Pass it to the work the lock protects.
   */
  get signal(): AbortSignal {
    if (!this.#controller) {
      const controller = new AbortController()
      this.#controller = controller
      const what = this.#what
      const lost = (reason: string) => controller.abort(new LockLostError(lostMessage(what, reason)))
      const already = this.#native.lostReason
      // Already lost: abort now, so `signal.aborted` is true the moment it is read.
      if (already != null) lost(already)
      // The callback holds the controller, not the handle, so garbage collection still works.
      else {
        this.#native.onLost(lost)
        this.#ref = new WeakRef(this)
        this.#watched?.add(this.#ref)
      }
    }
    return this.#controller.signal
  }

  /** Aborts `signal` now if the lock is known lost and the native notice has not come yet. @internal */
  syncLost(): void {
    const reason = this.#native.lostReason
    if (reason != null && this.#controller && !this.#controller.signal.aborted) {
      this.#controller.abort(new LockLostError(lostMessage(this.#what, reason)))
    }
  }

  /**
   * The fencing token of this grant: strictly greater than that of every earlier grant of the
   * same name. Pass it to the storage you write to, and have it reject smaller tokens.
   */
  get fencingToken(): bigint {
    return this.#native.fencingToken
  }

  /**
   * Whether the lock is held right now, as far as this process can tell without a round trip:
   * false once it was released or lost, once its local lease deadline passed (Redis; checked
   * against the clock when read, so a process that was paused past its lease sees `false` at
   * once, before any timer or event has run), or while the connection its grant depends on is
   * in doubt. Check it synchronously before each step of work the lock protects; `signal`
   * aborts too, but only once the event loop gets to run.
   */
  get isHeld(): boolean {
    return this.#native.isHeld
  }

  /** Whether the lock has been released. */
  get isReleased(): boolean {
    return this.#native.isReleased
  }

  /**
   * Throws a {@link LockLostError} synchronously when {@link LockHandle.isHeld} is false (lost,
   * released, its lease past, or in doubt); returns otherwise. The check to make before each
   * step of the work the lock protects, and before each write a fencing guard cannot cover:
   *
   * ```ts
   * for (const batch of batches) {
   *   handle.assertHeld()
   *   await write(batch)
   * }
   * ```
   */
  assertHeld(): void {
    if (this.#native.isHeld) return
    const lost = this.#native.lostReason
    const why =
      lost != null
        ? lostMessage(this.#what, lost)
        : this.#native.isReleased
          ? `${this.#what} was released`
          : `${this.#what} is not held: its lease has run out or its connection is in doubt`
    throw new LockLostError(why)
  }

  /**
   * How long the grant's lease has left, in ms, as this process counts it (no round trip): the
   * local deadline a renewal must beat, which moves on with each renewal. `null` where locks
   * have no lease (file, PostgreSQL, memory) and once the handle is released; 0 once lost.
   */
  get leaseRemainingMs(): number | null {
    if (this.#native.isReleased) return null
    return this.#native.leaseRemainingMs ?? null
  }

  /** `util.inspect` shows the name, backend, kind, token, state and lease. */
  [inspect.custom](depth: number, options: object, show: typeof inspect): string {
    const state = this.#native.isReleased ? 'released' : this.#native.lostReason != null ? 'lost' : 'held'
    const fields: Record<string, unknown> = {
      name: this.name,
      backend: this.backend,
      kind: this.kind,
      fencingToken: this.fencingToken,
      state,
    }
    if (this.permits !== 1) fields.permits = this.permits
    const lease = this.leaseRemainingMs
    if (lease !== null) fields.leaseRemainingMs = lease
    return `LockHandle ${show(fields, { ...options, depth: depth < 0 ? null : depth })}`
  }

  /**
   * Sets the lease to `ms` from now (≥ 100), and uses that length for later renewals. Locks
   * without a lease (file, PostgreSQL, memory) cannot expire while held: for them it only
   * checks `ms` and resolves. Rejects with {@link LockLostError} if the lock is already lost.
   */
  async extend(ms: number): Promise<void> {
    if (typeof ms !== 'number') {
      throw invalidArgType(`The "ms" argument must be of type number. Received ${typeName(ms)}`)
    }
    if (this.#native.isReleased) throw this.#releasedError()
    try {
      if (extendChannel.hasSubscribers) {
        const context: ExtendTrace = { ...this.#traceBase(), ms }
        await extendChannel.tracePromise(() => this.#native.extend(ms), context)
      } else await this.#native.extend(ms)
    } catch (err) {
      // Released while the call was on its way.
      if (this.#native.isReleased && !this.#native.lostReason) throw this.#releasedError()
      throw toLockError(err)
    }
  }

  /** How messages name this lock, e.g. `redis lock "orders:42"`. @internal */
  get description(): string {
    return this.#what
  }

  #releasedError(): LockStateError {
    return new LockStateError(`Cannot extend ${this.#what}: it was released`)
  }

  /** Releases the lock. Idempotent; never throws because the lock was already lost. */
  async release(): Promise<void> {
    if (releaseChannel.hasSubscribers && !this.#native.isReleased) {
      const context: ReleaseTrace = {
        ...this.#traceBase(),
        holdMs: performance.now() - this.#grantedAt,
        wasLost: this.#native.lostReason != null,
      }
      return releaseChannel.tracePromise(() => this.#release(), context)
    }
    return this.#release()
  }

  async #release(): Promise<void> {
    clearTimeout(this.#holdTimer)
    if (this.#ref) this.#watched?.delete(this.#ref)
    try {
      const id = this.#settler.id()
      if (!this.#native.release(id)) await this.#settler.wait(id)
    } catch (err) {
      throw toLockError(err)
    }
  }

  #traceBase() {
    return { name: this.name, backend: this.backend, kind: this.kind, fencingToken: this.fencingToken }
  }

  /** Releases the lock at the end of an `await using` block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release()
  }
}

/**
 * Runs `fn` with the lock held and releases it afterwards, also when `fn` throws. The caller's
 * error is what rejects; if the release fails too, the rejection is a {@link SuppressedError}
 * whose `error` is the caller's error and whose `suppressed` is the release failure.
 */
export async function withHeld<H extends { release(): Promise<void> }, T>(
  held: H,
  fn: (held: H) => T | Promise<T>,
  what: string,
): Promise<T> {
  let result: T
  try {
    result = await fn(held)
  } catch (err) {
    try {
      await held.release()
    } catch (releaseErr) {
      throw new SuppressedError(err, releaseErr, `The callback under ${what} threw, and the release failed too`)
    }
    throw err
  }
  await held.release()
  return result
}

/** Builds the message of a lost lock, naming the lock once. */
function lostMessage(what: string, reason: string): string {
  return reason.includes(what) ? reason : `${what} was lost: ${reason}`
}
