/**
 * Handles and the per-name lock objects every provider hands out. Backend-independent: a
 * provider supplies its native object and a backend name; everything else is here, once.
 */
import { inspect } from 'node:util'

import {
  acquireChannel,
  extendChannel,
  lostChannel,
  releaseChannel,
  type AcquireOutcome,
  type AcquireTrace,
  type ExtendTrace,
  type LostMessage,
  type ReleaseTrace,
} from './diagnostics'
import native, { type NativeHandle, type NativeProvider } from './native'
import {
  AbortError,
  checkKeys,
  invalidArgValue,
  LockClosedError,
  LockLostError,
  LockStateError,
  LockTimeoutError,
  SuppressedError,
  invalidArgType,
  toLockError,
} from './errors'

/** Options of every acquire call. */
export interface AcquireOptions {
  /**
   * How long to wait, in milliseconds. `undefined` (the default for `acquire`) waits forever;
   * `0` (the default for `tryAcquire`) makes one attempt.
   */
  timeoutMs?: number | undefined
  /**
   * Cancels the wait: the call rejects with {@link AbortError} and nothing stays held. Any
   * object shaped like an `AbortSignal` (`aborted`, `reason`, `addEventListener`,
   * `removeEventListener`) is accepted, as Node's own APIs accept them.
   */
  signal?: AbortSignalLike | undefined
  /**
   * The lease of this grant, in ms, instead of the provider's `leaseMs`, in the same range as
   * that option (Redis: 100 and up; etcd: 2 000 and up). Only backends whose locks expire (Redis,
   * etcd) use it; the others ignore it.
   */
  leaseMs?: number | undefined
  /**
   * Whether a lease is renewed in the background while held (default: the provider's
   * `autoRenew`, itself true). With `false` the lease ends `leaseMs` after the grant unless
   * `handle.extend()` moves it, and the handle's signal aborts then. Only backends whose locks
   * expire (Redis) have leases; the others ignore it.
   */
  autoRenew?: boolean | undefined
  /**
   * The longest this grant may be held, in ms (default: the provider's `maxHoldMs`, itself
   * none). Then the lock is released and the handle's signal aborts with a `LockLostError`,
   * on every backend: a cap for work that must not hold a lock forever.
   */
  maxHoldMs?: number | undefined
}

/** Options of a semaphore's acquire calls: those of every acquire, and how many permits. */
export interface SemaphoreAcquireOptions extends AcquireOptions {
  /**
   * How many of the semaphore's permits to take, all at once or none (default 1; a whole
   * number up to `maxCount`). Waiting stays first come, first served: a request for many
   * permits is not overtaken by later requests for fewer.
   */
  permits?: number | undefined
}

/** A snapshot of a lock's state from {@link DistributedLock.getInfo} and friends. */
export interface LockInfo {
  /**
   * Whether an acquire would have to wait now: the lock is held (for a reader-writer lock, by a
   * reader or the writer); for a semaphore, every permit is taken.
   */
  held: boolean
  /** How many hold it, where the backend can count them (file locks cannot count readers). */
  holders: number | null
  /** The longest remaining lease of a holder, in ms (Redis); `null` where locks have no lease. */
  leaseRemainingMs: number | null
  /** The last fencing token granted for the name, where the backend keeps one per name. */
  fencingToken: bigint | null
}

/** What `signal` options accept: an `AbortSignal`, or any object of the same shape. */
export interface AbortSignalLike {
  /** Whether the signal has aborted. */
  readonly aborted: boolean
  /** Why it aborted; becomes the `cause` of the {@link AbortError} a cancelled wait rejects with. */
  readonly reason?: unknown
  /** Registers `listener` for the `abort` event. */
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void
  /** Removes a listener added with `addEventListener`. */
  removeEventListener(type: 'abort', listener: () => void): void
}

/** Whether `value` can stand in for an `AbortSignal`. */
export function isAbortSignalLike(value: unknown): value is AbortSignalLike {
  if (value instanceof AbortSignal) return true
  if (value === null || typeof value !== 'object') return false
  const s = value as Record<string, unknown>
  return (
    typeof s.aborted === 'boolean' &&
    typeof s.addEventListener === 'function' &&
    typeof s.removeEventListener === 'function'
  )
}

/** Checks a `signal` option; `where` names it in errors. */
export function checkSignal(value: unknown, where: string): AbortSignalLike | undefined {
  if (value !== undefined && !isAbortSignalLike(value)) {
    throw invalidArgType(`The "${where}" property must be an instance of AbortSignal. Received ${typeName(value)}`)
  }
  return value
}

/** The keys an acquire's options may have. */
const ACQUIRE_KEYS = ['timeoutMs', 'signal', 'leaseMs', 'autoRenew', 'maxHoldMs'] as const
/** The keys a semaphore acquire's options may have. */
const SEMAPHORE_KEYS = [...ACQUIRE_KEYS, 'permits'] as const

/** The longest `maxHoldMs`: what a Node timer can wait. */
const MAX_HOLD_MS = 2 ** 31 - 1

/** Checks a `maxHoldMs` option; `where` names it in errors. */
export function checkMaxHold(value: unknown, where: string): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number') {
    throw invalidArgType(`The "${where}" property must be of type number. Received ${typeName(value)}`)
  }
  if (!Number.isInteger(value) || value < 1 || value > MAX_HOLD_MS) {
    throw invalidArgValue(`The "${where}" property must be a whole number from 1 to ${MAX_HOLD_MS}. Received ${value}`)
  }
  return value
}

/** Checks an `autoRenew` option; `where` names it in errors. */
export function checkAutoRenew(value: unknown, where: string): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') {
    throw invalidArgType(`The "${where}" property must be of type boolean. Received ${typeName(value)}`)
  }
  return value as boolean | undefined
}

type Pending = { resolve: (handle: NativeHandle | null) => void; reject: (err: unknown) => void }

/**
 * Settles the native calls of one provider that could not answer at once. The binding settles
 * them all through one long-lived channel (one callback per provider, not one per call), keyed
 * by the id each call was given. A pending call keeps the process alive; an idle provider does
 * not.
 * @internal
 */
export class Settler {
  readonly #pending = new Map<number, Pending>()
  #next = 0
  // The native channel does not hold the event loop open; this timer does, while calls pend.
  readonly #alive = setInterval(() => {}, 2 ** 31 - 1).unref()

  constructor(nativeProvider: NativeProvider) {
    nativeProvider.onSettle((id, handle, error) => this.#settle(id, handle, error))
  }

  /** A fresh id for a call (ids wrap at 2^32; far more than can pend at once). */
  id(): number {
    this.#next = (this.#next + 1) >>> 0
    return this.#next
  }

  /** The answer of the call `id`, which the binding said will come later. */
  wait(id: number): Promise<NativeHandle | null> {
    return new Promise((resolve, reject) => {
      if (this.#pending.size === 0) this.#alive.ref()
      this.#pending.set(id, { resolve, reject })
    })
  }

  #settle(id: number, handle?: NativeHandle | null, error?: string | null): void {
    const pending = this.#pending.get(id)
    if (!pending) return
    this.#pending.delete(id)
    if (this.#pending.size === 0) this.#alive.unref()
    if (error != null) pending.reject(new Error(error))
    else pending.resolve(handle ?? null)
  }
}

/** What a provider gives its lock objects: the native side and the names used in messages. */
export interface LockSource {
  readonly native: NativeProvider
  /** Settles the native calls that had to wait. @internal */
  readonly settler: Settler
  /** The backend's name as messages show it: `file`, `postgres`, `redis`. */
  readonly backend: string
  /** Throws {@link LockClosedError} if the provider was closed. */
  assertOpen(): void
  /** The provider's defaults for acquires that do not say. */
  readonly defaults?: { readonly autoRenew?: boolean | undefined; readonly maxHoldMs?: number | undefined } | undefined
}

/** What a handle holds: a mutex, a reader-writer lock's read or write side, or a semaphore permit. */
export type LockKind = 'mutex' | 'read' | 'write' | 'semaphore'

const PRIMITIVE: Record<LockKind, string> = {
  mutex: 'lock',
  read: 'reader-writer lock',
  write: 'reader-writer lock',
  semaphore: 'semaphore',
}

function describe(source: LockSource, kind: LockKind, name: string): string {
  return `${source.backend} ${PRIMITIVE[kind]} ${JSON.stringify(name)}`
}

/** Validates `name` and returns it; throws `TypeError` / `RangeError` with Node's codes. */
export function checkName(name: unknown): string {
  if (typeof name !== 'string') {
    throw invalidArgType(`The "name" argument must be of type string. Received ${typeName(name)}`)
  }
  try {
    native.validateName(name)
  } catch (err) {
    throw toLockError(err)
  }
  return name
}

/** A short description of a value's type for argument errors, as Node words them. */
export function typeName(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an instance of Array'
  if (typeof value === 'object') return `an instance of ${value.constructor?.name ?? 'Object'}`
  if (typeof value === 'string') return `type string (${JSON.stringify(value)})`
  return `type ${typeof value} (${String(value)})`
}

/**
 * Checks an acquire's options (types and keys; the native side checks the values). A
 * semaphore's may also say how many `permits`.
 */
export function checkOptions(options: unknown, semaphore = false): SemaphoreAcquireOptions {
  if (options === undefined) return {}
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, semaphore ? SEMAPHORE_KEYS : ACQUIRE_KEYS)
  const { timeoutMs, signal, leaseMs, autoRenew, maxHoldMs, permits } = options as SemaphoreAcquireOptions
  checkAutoRenew(autoRenew, 'options.autoRenew')
  checkMaxHold(maxHoldMs, 'options.maxHoldMs')
  for (const [key, value] of [
    ['timeoutMs', timeoutMs],
    ['leaseMs', leaseMs],
    ['permits', permits],
  ] as const) {
    if (value !== undefined && typeof value !== 'number') {
      throw invalidArgType(`The "options.${key}" property must be of type number. Received ${typeName(value)}`)
    }
  }
  checkSignal(signal, 'options.signal')
  return { timeoutMs, signal, leaseMs, autoRenew, maxHoldMs, permits }
}

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
  /** How long the lease has left, in ms; `null` where locks have no lease and once released. */
  readonly leaseRemainingMs: number | null
  /** Sets the lease to `ms` from now; rejects with {@link LockLostError} if the lock is lost. */
  extend(ms: number): Promise<void>
  /** Releases the lock; idempotent. */
  release(): Promise<void>
}

/** An exclusive lock, as a type: what {@link DistributedLock} offers. */
export interface Lock {
  /** The lock's name. */
  readonly name: string
  /** Waits for the lock (forever unless `timeoutMs` is set); rejects with {@link LockTimeoutError} on timeout. */
  acquire(options?: AcquireOptions): Promise<Handle>
  /** One attempt by default (`timeoutMs: 0`); resolves to `null` if the lock is busy. */
  tryAcquire(options?: AcquireOptions): Promise<Handle | null>
  /** Runs `fn` while holding the lock and releases it afterwards, also when `fn` throws. */
  withLock<T>(fn: (handle: Handle) => T | Promise<T>, options?: AcquireOptions): Promise<T>
  /** Whether the lock is held now, by anyone (a snapshot, for monitoring). */
  isLocked(): Promise<boolean>
  /** A snapshot of the lock's state: held?, holders, remaining lease, last fencing token. */
  getInfo(): Promise<LockInfo>
  /** Resolves once the lock is free, without taking it. */
  waitForUnlock(options?: WaitOptions): Promise<void>
}

/** A reader-writer lock, as a type: what {@link DistributedReaderWriterLock} offers. */
export interface ReaderWriterLock {
  /** The lock's name. */
  readonly name: string
  /** Waits for a shared (read) lock. */
  acquireRead(options?: AcquireOptions): Promise<Handle>
  /** Tries for a shared (read) lock; `null` if a writer holds or waits for it. */
  tryAcquireRead(options?: AcquireOptions): Promise<Handle | null>
  /** Waits for the exclusive (write) lock. */
  acquireWrite(options?: AcquireOptions): Promise<Handle>
  /** Tries for the exclusive (write) lock; `null` if anyone holds it. */
  tryAcquireWrite(options?: AcquireOptions): Promise<Handle | null>
  /** Runs `fn` holding a read lock and releases it afterwards, also when `fn` throws. */
  withReadLock<T>(fn: (handle: Handle) => T | Promise<T>, options?: AcquireOptions): Promise<T>
  /** Runs `fn` holding the write lock and releases it afterwards, also when `fn` throws. */
  withWriteLock<T>(fn: (handle: Handle) => T | Promise<T>, options?: AcquireOptions): Promise<T>
  /** Whether the lock is held now, by a reader or the writer (a snapshot, for monitoring). */
  isLocked(): Promise<boolean>
  /** A snapshot of the lock's state: held?, holders, remaining lease, last fencing token. */
  getInfo(): Promise<LockInfo>
  /** Resolves once no reader or writer holds the lock, without taking it. */
  waitForUnlock(options?: WaitOptions): Promise<void>
}

/** A semaphore, as a type: what {@link DistributedSemaphore} offers. */
export interface Semaphore extends Lock {
  /** How many permits it has: at most that many are taken at once. */
  readonly maxCount: number
  /** Waits for a permit (or `options.permits` of them, taken together). */
  acquire(options?: SemaphoreAcquireOptions): Promise<Handle>
  /** Tries for a permit (or `options.permits`); `null` if not that many are free. */
  tryAcquire(options?: SemaphoreAcquireOptions): Promise<Handle | null>
  /** Runs `fn` holding a permit (or `options.permits`) and releases it afterwards, also when `fn` throws. */
  withLock<T>(fn: (handle: Handle) => T | Promise<T>, options?: SemaphoreAcquireOptions): Promise<T>
  /** Resolves once a permit (or `options.permits` of them) is free, without taking it. */
  waitForUnlock(options?: SemaphoreWaitOptions): Promise<void>
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
      else this.#native.onLost(lost)
    }
    return this.#controller.signal
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

function acquire(
  source: LockSource,
  name: string,
  kind: LockKind,
  maxCount: number | undefined,
  options: unknown,
  tryOnly: boolean,
): Promise<LockHandle | null> {
  if (!acquireChannel.hasSubscribers) return acquireUntraced(source, name, kind, maxCount, options, tryOnly)
  const raw = (options ?? {}) as AcquireOptions
  const context: AcquireTrace = {
    name,
    backend: source.backend,
    kind,
    timeoutMs: typeof raw.timeoutMs === 'number' ? raw.timeoutMs : tryOnly ? 0 : undefined,
    tryOnly,
  }
  const started = performance.now()
  return acquireChannel.tracePromise(async () => {
    try {
      const handle = await acquireUntraced(source, name, kind, maxCount, options, tryOnly)
      context.outcome = handle ? 'granted' : 'busy'
      if (handle) context.fencingToken = handle.fencingToken
      return handle
    } catch (err) {
      context.outcome = outcomeOf(err)
      throw err
    } finally {
      context.waitMs = performance.now() - started
    }
  }, context)
}

function outcomeOf(err: unknown): AcquireOutcome {
  if (err instanceof LockTimeoutError) return 'timeout'
  if (err instanceof AbortError) return 'aborted'
  if (err instanceof LockClosedError) return 'closed'
  return 'error'
}

async function acquireUntraced(
  source: LockSource,
  name: string,
  kind: LockKind,
  maxCount: number | undefined,
  options: unknown,
  tryOnly: boolean,
): Promise<LockHandle | null> {
  const checked = checkOptions(options, kind === 'semaphore')
  const { timeoutMs = tryOnly ? 0 : undefined, signal, leaseMs, permits } = checked
  const autoRenew = checked.autoRenew ?? source.defaults?.autoRenew
  const maxHoldMs = checked.maxHoldMs ?? source.defaults?.maxHoldMs
  const what = describe(source, kind, name)
  if (signal?.aborted) throw new AbortError(`The wait for ${what} was aborted`, { cause: signal.reason })
  source.assertOpen()
  let onAbort: (() => void) | undefined
  let cancel: InstanceType<typeof native.CancelToken> | undefined
  if (signal) {
    const token = new native.CancelToken()
    cancel = token
    onAbort = () => token.cancel()
    signal.addEventListener('abort', onAbort, { once: true })
  }
  try {
    const started = performance.now()
    let left = timeoutMs
    for (;;) {
      const id = source.settler.id()
      let handle = source.native.acquire(id, name, kind, maxCount, permits, left, cancel, leaseMs, autoRenew)
      if (handle === undefined) handle = await source.settler.wait(id)
      if (handle && handle.lostReason != null) {
        // Granted, then lost before the grant reached this thread (its session ended, its
        // lease ran out while the answer waited): someone else may hold it already, so it is
        // not handed out. Try again with what is left of the budget.
        await new LockHandle(handle, name, kind, source, what).release().catch(() => {})
        if (left === undefined || left === Infinity) continue
        left = timeoutMs! - (performance.now() - started)
        if (left > 0 && timeoutMs !== 0) continue
        handle = null
      }
      if (handle) return new LockHandle(handle, name, kind, source, what, maxHoldMs, permits)
      if (tryOnly) return null
      throw new LockTimeoutError(`Timed out after ${timeoutMs} ms waiting for ${what}`)
    }
  } catch (err) {
    throw toLockError(err, signal)
  } finally {
    if (onAbort) signal?.removeEventListener('abort', onAbort)
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

/** Checks `fn`, then acquires, runs `fn` and releases, also when `fn` throws. */
async function runLocked<T>(fn: LockedFn<T>, acquiring: () => Promise<LockHandle>): Promise<T> {
  if (typeof fn !== 'function') {
    throw invalidArgType(`The "fn" argument must be of type function. Received ${typeName(fn)}`)
  }
  const handle = await acquiring()
  return withHeld(handle, fn, handle.description)
}

/** Builds the message of a lost lock, naming the lock once. */
function lostMessage(what: string, reason: string): string {
  return reason.includes(what) ? reason : `${what} was lost: ${reason}`
}

/** What the lock objects share: their name, their provider, and acquiring as one kind. */
abstract class NamedLock {
  /** The lock's name. */
  readonly name: string
  readonly #source: LockSource

  /** @internal */
  constructor(source: LockSource, name: unknown) {
    source.assertOpen()
    this.name = checkName(name)
    this.#source = source
  }

  /** @internal */
  protected async acquireAs(kind: LockKind, options: unknown, maxCount?: number): Promise<LockHandle> {
    return (await acquire(this.#source, this.name, kind, maxCount, options, false)) as LockHandle
  }

  /** @internal */
  protected tryAcquireAs(kind: LockKind, options: unknown, maxCount?: number): Promise<LockHandle | null> {
    return acquire(this.#source, this.name, kind, maxCount, options, true)
  }

  /**
   * Resolves once the lock is free (for a semaphore: a permit is free), without taking it. It
   * looks with `getInfo()`, 5 ms after the first look and backing off to every 250 ms, so on a
   * name that is never free for a moment it waits until `timeoutMs` (then rejects with
   * {@link LockTimeoutError}) or `signal` (then {@link AbortError}).
   */
  async waitForUnlock(options?: WaitOptions): Promise<void> {
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
    }
    const { timeoutMs, signal } = options ?? {}
    const isFree = this.freeCheck(options ?? {})
    if (timeoutMs !== undefined && (typeof timeoutMs !== 'number' || !(timeoutMs >= 0))) {
      throw invalidArgValue(`The "options.timeoutMs" property must be a number >= 0. Received ${String(timeoutMs)}`)
    }
    checkSignal(signal, 'options.signal')
    const what = this.#what
    const deadline = timeoutMs === undefined ? Infinity : performance.now() + timeoutMs
    for (let pause = 5; ; pause = Math.min(pause * 2, 250)) {
      if (signal?.aborted) throw new AbortError(`The wait for ${what} to be free was aborted`, { cause: signal.reason })
      if (isFree(await this.getInfo())) return
      const left = deadline - performance.now()
      if (left <= 0) throw new LockTimeoutError(`Timed out after ${timeoutMs} ms waiting for ${what} to be free`)
      await pauseFor(Math.min(pause, left), signal)
    }
  }

  /** A snapshot of the lock's state. */
  abstract getInfo(): Promise<LockInfo>

  /**
   * Checks `waitForUnlock`'s option keys and says when a snapshot counts as free.
   * @internal
   */
  protected freeCheck(options: object): (info: LockInfo) => boolean {
    checkKeys(options, ['timeoutMs', 'signal'])
    return (info) => !info.held
  }

  /** How messages name this lock. */
  get #what(): string {
    return describe(this.#source, this.kindForMessages(), this.name)
  }

  /** @internal */
  protected abstract kindForMessages(): LockKind

  /** @internal */
  protected async inspectAs(kind: LockKind, maxCount?: number): Promise<LockInfo> {
    this.#source.assertOpen()
    try {
      const info = await this.#source.native.inspect(this.name, kind, maxCount)
      return {
        held: info.held,
        holders: info.holders ?? null,
        leaseRemainingMs: info.leaseRemainingMs ?? null,
        fencingToken: info.fencingToken ?? null,
      }
    } catch (err) {
      throw toLockError(err)
    }
  }
}

/** Options of `waitForUnlock`. */
export interface WaitOptions {
  /** How long to wait, in ms; default forever. */
  timeoutMs?: number | undefined
  /** Cancels the wait. */
  signal?: AbortSignalLike | undefined
}

/** Options of a semaphore's `waitForUnlock`. */
export interface SemaphoreWaitOptions extends WaitOptions {
  /** How many permits must be free at once (default 1, up to `maxCount`). */
  permits?: number | undefined
}

/** Waits `ms`, or until `signal` aborts (then resolves early; the caller looks again). */
function pauseFor(ms: number, signal: AbortSignalLike | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}

/** A function run while a lock is held; its result is passed through. */
export type LockedFn<T> = (handle: LockHandle) => T | Promise<T>

/** An exclusive lock on one name. */
export class DistributedLock extends NamedLock implements Lock {
  /** @internal */
  protected kindForMessages(): LockKind {
    return 'mutex'
  }

  /** Waits for the lock (forever unless `timeoutMs` is set); rejects with {@link LockTimeoutError} on timeout. */
  acquire(options?: AcquireOptions): Promise<LockHandle> {
    return this.acquireAs('mutex', options)
  }

  /** One attempt by default (`timeoutMs: 0`); resolves to `null` if the lock is busy. */
  tryAcquire(options?: AcquireOptions): Promise<LockHandle | null> {
    return this.tryAcquireAs('mutex', options)
  }

  /** Runs `fn` while holding the lock and releases it afterwards, also when `fn` throws. */
  withLock<T>(fn: LockedFn<T>, options?: AcquireOptions): Promise<T> {
    return runLocked(fn, () => this.acquire(options))
  }

  /** Whether the lock is held now, by anyone (a snapshot, for monitoring). */
  async isLocked(): Promise<boolean> {
    return (await this.getInfo()).held
  }

  /** A snapshot of the lock's state: held?, holders, remaining lease, last fencing token. */
  getInfo(): Promise<LockInfo> {
    return this.inspectAs('mutex')
  }
}

/** A reader-writer lock: many readers or one writer; a waiting writer holds back new readers. */
export class DistributedReaderWriterLock extends NamedLock implements ReaderWriterLock {
  /** @internal */
  protected kindForMessages(): LockKind {
    return 'write'
  }

  /** Waits for a shared (read) lock. */
  acquireRead(options?: AcquireOptions): Promise<LockHandle> {
    return this.acquireAs('read', options)
  }

  /** Tries for a shared (read) lock; `null` if a writer holds or waits for it. */
  tryAcquireRead(options?: AcquireOptions): Promise<LockHandle | null> {
    return this.tryAcquireAs('read', options)
  }

  /** Waits for the exclusive (write) lock. */
  acquireWrite(options?: AcquireOptions): Promise<LockHandle> {
    return this.acquireAs('write', options)
  }

  /** Tries for the exclusive (write) lock; `null` if anyone holds it. */
  tryAcquireWrite(options?: AcquireOptions): Promise<LockHandle | null> {
    return this.tryAcquireAs('write', options)
  }

  /** Runs `fn` holding a read lock. */
  withReadLock<T>(fn: LockedFn<T>, options?: AcquireOptions): Promise<T> {
    return runLocked(fn, () => this.acquireRead(options))
  }

  /** Runs `fn` holding the write lock. */
  withWriteLock<T>(fn: LockedFn<T>, options?: AcquireOptions): Promise<T> {
    return runLocked(fn, () => this.acquireWrite(options))
  }

  /** Whether the lock is held now, by a reader or the writer (a snapshot, for monitoring). */
  async isLocked(): Promise<boolean> {
    return (await this.getInfo()).held
  }

  /** A snapshot of the lock's state: held?, holders, remaining lease, last fencing token. */
  getInfo(): Promise<LockInfo> {
    return this.inspectAs('write')
  }
}

/**
 * A semaphore: at most `maxCount` permits of the name taken at once; an acquire takes one, or
 * `permits` of them.
 */
export class DistributedSemaphore extends NamedLock implements Semaphore {
  /** @internal */
  protected kindForMessages(): LockKind {
    return 'semaphore'
  }

  /** How many holders it admits at once. */
  readonly maxCount: number

  /** @internal */
  constructor(source: LockSource, name: unknown, maxCount: unknown) {
    super(source, name)
    if (typeof maxCount !== 'number') {
      throw invalidArgType(`The "maxCount" argument must be of type number. Received ${typeName(maxCount)}`)
    }
    try {
      native.validateMaxCount(maxCount)
    } catch (err) {
      throw toLockError(err)
    }
    this.maxCount = maxCount
  }

  /** Waits for a permit (or `options.permits` of them, taken together). */
  acquire(options?: SemaphoreAcquireOptions): Promise<LockHandle> {
    return this.acquireAs('semaphore', options, this.maxCount)
  }

  /** Tries for a permit (or `options.permits`); `null` if not that many are free. */
  tryAcquire(options?: SemaphoreAcquireOptions): Promise<LockHandle | null> {
    return this.tryAcquireAs('semaphore', options, this.maxCount)
  }

  /** Runs `fn` holding a permit (or `options.permits`). */
  withLock<T>(fn: LockedFn<T>, options?: SemaphoreAcquireOptions): Promise<T> {
    return runLocked(fn, () => this.acquire(options))
  }

  /**
   * Resolves once a permit (or `options.permits` of them) is free, without taking it. It looks
   * with `getInfo()` as a lock's `waitForUnlock` does, with the same timeout and cancellation.
   */
  override waitForUnlock(options?: SemaphoreWaitOptions): Promise<void> {
    return super.waitForUnlock(options)
  }

  /** @internal */
  protected override freeCheck(options: SemaphoreWaitOptions): (info: LockInfo) => boolean {
    checkKeys(options, ['timeoutMs', 'signal', 'permits'])
    const { permits = 1 } = options
    if (typeof permits !== 'number') {
      throw invalidArgType(`The "options.permits" property must be of type number. Received ${typeName(permits)}`)
    }
    if (!Number.isInteger(permits) || permits < 1 || permits > this.maxCount) {
      throw invalidArgValue(
        `The "options.permits" property must be a whole number from 1 to the semaphore's maxCount ${this.maxCount}. Received ${permits}`,
      )
    }
    // Semaphores count the permits taken on every backend.
    return (info) => (info.holders === null ? !info.held : this.maxCount - info.holders >= permits)
  }

  /** Whether every permit is taken now (a snapshot, for monitoring). */
  async isLocked(): Promise<boolean> {
    return (await this.getInfo()).held
  }

  /** A snapshot: held (no permit free), holders, remaining lease, last fencing token. */
  getInfo(): Promise<LockInfo> {
    return this.inspectAs('semaphore', this.maxCount)
  }
}

/** Closed-provider check shared by providers. */
export function closedError(backend: string): LockClosedError {
  return new LockClosedError(`The ${backend} lock provider is closed`)
}
