/**
 * The per-name lock objects every provider hands out. Backend-independent: a provider supplies
 * its native object and a backend name ({@link LockSource}); everything else is here and in the
 * modules beside it (options, acquire, handle, settle), once.
 */
import native from './native'
import {
  checkKeys,
  invalidArgType,
  invalidArgValue,
  LockClosedError,
  LockTimeoutError,
  AbortError,
  toLockError,
} from './errors'
import { acquire } from './acquire'
import { withHeld, type Handle, type LockHandle } from './handle'
import {
  checkName,
  checkSignal,
  typeName,
  type AbortSignalLike,
  type AcquireOptions,
  type LockKind,
  type SemaphoreAcquireOptions,
  type SemaphoreWaitOptions,
  type WaitOptions,
} from './options'
import { describe, type LockSource } from './settle'

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

/** Checks `fn`, then acquires, runs `fn` and releases, also when `fn` throws. */
async function runLocked<T>(fn: LockedFn<T>, acquiring: () => Promise<LockHandle>): Promise<T> {
  if (typeof fn !== 'function') {
    throw invalidArgType(`The "fn" argument must be of type function. Received ${typeName(fn)}`)
  }
  const handle = await acquiring()
  return withHeld(handle, fn, handle.description)
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
