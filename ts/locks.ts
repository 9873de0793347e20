/**
 * Handles and the per-name lock objects every provider hands out. Backend-independent: a
 * provider supplies its native object and a backend name; everything else is here, once.
 */
import native, { type NativeHandle, type NativeProvider } from './native'
import { AbortError, LockClosedError, LockLostError, LockTimeoutError, invalidArgType, toLockError } from './errors'

/** Options of every acquire call. */
export interface AcquireOptions {
  /**
   * How long to wait, in milliseconds. `undefined` (the default for `acquire`) waits forever;
   * `0` (the default for `tryAcquire`) makes one attempt.
   */
  timeoutMs?: number
  /** Cancels the wait: the call rejects with {@link AbortError} and nothing stays held. */
  signal?: AbortSignal
}

/** What a provider gives its lock objects: the native side and the names used in messages. */
export interface LockSource {
  readonly native: NativeProvider
  /** The backend's name as messages show it: `file`, `postgres`, `redis`. */
  readonly backend: string
  /** Throws {@link LockClosedError} if the provider was closed. */
  assertOpen(): void
}

type Kind = 'mutex' | 'read' | 'write' | 'semaphore'

const PRIMITIVE: Record<Kind, string> = {
  mutex: 'lock',
  read: 'reader-writer lock',
  write: 'reader-writer lock',
  semaphore: 'semaphore',
}

function describe(source: LockSource, kind: Kind, name: string): string {
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

function checkOptions(options: unknown): AcquireOptions {
  if (options === undefined) return {}
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  const { timeoutMs, signal } = options as AcquireOptions
  if (timeoutMs !== undefined && typeof timeoutMs !== 'number') {
    throw invalidArgType(`The "options.timeoutMs" property must be of type number. Received ${typeName(timeoutMs)}`)
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw invalidArgType(
      `The "options.signal" property must be an instance of AbortSignal. Received ${typeName(signal)}`,
    )
  }
  return { timeoutMs, signal }
}

/**
 * A held lock. Release it with {@link LockHandle.release} or, better, `await using`. A handle
 * that is garbage-collected without release is released as a safety net.
 */
export class LockHandle implements AsyncDisposable {
  /** The lock's name. */
  readonly name: string
  readonly #native: NativeHandle
  readonly #what: string
  #controller: AbortController | undefined

  /** @internal */
  constructor(nativeHandle: NativeHandle, name: string, what: string) {
    this.#native = nativeHandle
    this.name = name
    this.#what = what
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
      // The callback holds the controller, not the handle, so garbage collection still works.
      this.#native.onLost((reason) => controller.abort(new LockLostError(`${what} was lost: ${reason}`)))
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

  /** Whether the lock has been released. */
  get isReleased(): boolean {
    return this.#native.isReleased
  }

  /** Releases the lock. Idempotent; never throws because the lock was already lost. */
  async release(): Promise<void> {
    try {
      await this.#native.release()
    } catch (err) {
      throw toLockError(err)
    }
  }

  /** Releases the lock at the end of an `await using` block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release()
  }
}

async function acquire(
  source: LockSource,
  name: string,
  kind: Kind,
  maxCount: number | undefined,
  options: unknown,
  tryOnly: boolean,
): Promise<LockHandle | null> {
  const { timeoutMs = tryOnly ? 0 : undefined, signal } = checkOptions(options)
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
    const handle = await source.native.acquire(name, kind, maxCount, timeoutMs, cancel)
    if (handle) return new LockHandle(handle, name, what)
    if (tryOnly) return null
    throw new LockTimeoutError(`Timed out after ${timeoutMs} ms waiting for ${what}`)
  } catch (err) {
    throw toLockError(err, signal)
  } finally {
    if (onAbort) signal?.removeEventListener('abort', onAbort)
  }
}

/** Checks `fn`, then acquires, runs `fn` and releases, also when `fn` throws. */
async function runLocked<T>(fn: LockedFn<T>, acquiring: () => Promise<LockHandle>): Promise<T> {
  if (typeof fn !== 'function') {
    throw invalidArgType(`The "fn" argument must be of type function. Received ${typeName(fn)}`)
  }
  const handle = await acquiring()
  try {
    return await fn(handle)
  } finally {
    await handle.release()
  }
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
  protected async acquireAs(kind: Kind, options: unknown, maxCount?: number): Promise<LockHandle> {
    return (await acquire(this.#source, this.name, kind, maxCount, options, false)) as LockHandle
  }

  /** @internal */
  protected tryAcquireAs(kind: Kind, options: unknown, maxCount?: number): Promise<LockHandle | null> {
    return acquire(this.#source, this.name, kind, maxCount, options, true)
  }
}

/** A function run while a lock is held; its result is passed through. */
export type LockedFn<T> = (handle: LockHandle) => T | Promise<T>

/** An exclusive lock on one name. */
export class DistributedLock extends NamedLock {
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
}

/** A reader-writer lock: many readers or one writer; a waiting writer holds back new readers. */
export class DistributedReaderWriterLock extends NamedLock {
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
}

/** A semaphore: at most `maxCount` holders of the name at once. */
export class DistributedSemaphore extends NamedLock {
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

  /** Waits for a permit. */
  acquire(options?: AcquireOptions): Promise<LockHandle> {
    return this.acquireAs('semaphore', options, this.maxCount)
  }

  /** Tries for a permit; `null` if all `maxCount` are taken. */
  tryAcquire(options?: AcquireOptions): Promise<LockHandle | null> {
    return this.tryAcquireAs('semaphore', options, this.maxCount)
  }

  /** Runs `fn` holding a permit. */
  withLock<T>(fn: LockedFn<T>, options?: AcquireOptions): Promise<T> {
    return runLocked(fn, () => this.acquire(options))
  }
}

/** Closed-provider check shared by providers. */
export function closedError(backend: string): LockClosedError {
  return new LockClosedError(`The ${backend} lock provider is closed`)
}
