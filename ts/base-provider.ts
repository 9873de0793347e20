/**
 * What every provider is ({@link LockProvider}) and the plumbing they share: the lock objects,
 * `acquireAll`, the settle channel, the backend's events, close.
 */
import type { NativeProvider } from './native'
import {
  closedError,
  DistributedLock,
  DistributedReaderWriterLock,
  DistributedSemaphore,
  type Lock,
  type ReaderWriterLock,
  type Semaphore,
} from './locks'
import { checkAutoRenew, checkMaxHold, typeName } from './options'
import { Settler, type LockSource } from './settle'
import { invalidArgType, toLockError } from './errors'
import { publishBackendEvent } from './diagnostics'
import { forget, releaseAtExit } from './exit'
import {
  acquireAll,
  type AcquireAllOptions,
  type AcquireAllStrategy,
  type MultiHandle,
  type MultiLockHandle,
} from './multi'

/**
 * What every provider offers, so application code can swap backends. Its methods return
 * interfaces ({@link Lock}, {@link Handle}, …), so a test can pass a hand-written fake.
 */
export interface LockProvider extends AsyncDisposable {
  /** An exclusive lock on `name`. */
  createLock(name: string): Lock
  /** A reader-writer lock on `name`. */
  createReaderWriterLock(name: string): ReaderWriterLock
  /** A semaphore on `name` admitting `maxCount` holders at once. */
  createSemaphore(name: string, maxCount: number): Semaphore
  /**
   * Takes the exclusive locks of all `names` (distinct) in their UTF-8 byte order, so callers
   * wanting overlapping sets cannot deadlock. `timeoutMs` bounds the whole call and `signal`
   * cancels it; on failure, whatever was taken is released before the call rejects.
   */
  acquireAll(names: readonly string[], options?: AcquireAllOptions): Promise<MultiHandle>
  /** Like {@link acquireAll} with one attempt per lock by default; `null` if any is busy. */
  tryAcquireAll(names: readonly string[], options?: AcquireAllOptions): Promise<MultiHandle | null>
  /** Rejects pending waits, releases held locks (their signals abort) and frees resources. */
  close(): Promise<void>
}

/**
 * Warns about a handle that was garbage-collected while held: the native side released its
 * lock then, but only whenever the collector ran, which is a bug in the caller.
 */
function warnLeaked(what: string): void {
  process.emitWarning(
    `${what} was released by garbage collection, not by release(): the lock stayed held until the collector ran. Release handles with \`await using\`, withLock or release().`,
    { type: 'DistlockWarning', code: 'DISTLOCK_LEAKED_HANDLE' },
  )
}

/** Shared plumbing of the providers. */
export abstract class BaseProvider implements LockProvider {
  readonly #source: LockSource

  /** @internal */
  protected constructor(nativeProvider: NativeProvider, backend: string, options: CommonProviderOptions = {}) {
    if (options.releaseOnExit !== undefined && typeof options.releaseOnExit !== 'boolean') {
      throw invalidArgType(
        `The "options.releaseOnExit" property must be of type boolean. Received ${typeName(options.releaseOnExit)}`,
      )
    }
    if (options.releaseOnExit) releaseAtExit(this)
    const defaults = {
      maxHoldMs: checkMaxHold(options.maxHoldMs, 'options.maxHoldMs'),
      autoRenew: checkAutoRenew((options as { autoRenew?: unknown }).autoRenew, 'options.autoRenew'),
    }
    nativeProvider.onEvent((kind, name, server, detail, ms) =>
      publishBackendEvent(backend, kind, name, server, detail, ms),
    )
    nativeProvider.onLeak(warnLeaked)
    this.#source = {
      defaults,
      native: nativeProvider,
      settler: new Settler(nativeProvider),
      watched: new Set(),
      backend,
      assertOpen() {
        if (nativeProvider.isClosed) throw closedError(backend)
      },
    }
  }

  /**
   * Where this provider's calls that have to wait are answered: `'event-loop'`, on the JS
   * thread's own libuv loop (the default in Node), or `'runtime'`, on distlock's background
   * threads (with `DISTLOCK_DRIVER=tokio`, in Bun and Deno, whose `uv_*` functions are not
   * libuv's, and wherever a libuv poll handle fails its start-up check). Both give the same
   * results; the event loop saves the hops between threads.
   */
  get driver(): 'event-loop' | 'runtime' {
    return this.#source.native.driver === 'event-loop' ? 'event-loop' : 'runtime'
  }

  createLock(name: string): DistributedLock {
    return new DistributedLock(this.#source, name)
  }

  createReaderWriterLock(name: string): DistributedReaderWriterLock {
    return new DistributedReaderWriterLock(this.#source, name)
  }

  createSemaphore(name: string, maxCount: number): DistributedSemaphore {
    return new DistributedSemaphore(this.#source, name, maxCount)
  }

  /**
   * How `acquireAll` takes its locks: one after another in the names' order, or (RedLock) all in
   * one round per server.
   * @internal
   */
  protected get acquireAllStrategy(): AcquireAllStrategy {
    return 'ordered'
  }

  async acquireAll(names: readonly string[], options?: AcquireAllOptions): Promise<MultiLockHandle> {
    return (await acquireAll(
      (n) => this.createLock(n),
      names,
      options,
      false,
      this.acquireAllStrategy,
    )) as MultiLockHandle
  }

  tryAcquireAll(names: readonly string[], options?: AcquireAllOptions): Promise<MultiLockHandle | null> {
    return acquireAll((n) => this.createLock(n), names, options, true, this.acquireAllStrategy)
  }

  async close(): Promise<void> {
    forget(this)
    try {
      await this.#source.native.close()
    } catch (err) {
      throw toLockError(err)
    } finally {
      // What the close lost has aborted its signal by the time close resolves.
      for (const ref of this.#source.watched ?? []) ref.deref()?.syncLost()
      this.#source.watched?.clear()
    }
  }

  /** Closes the provider at the end of an `await using` block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/** Options every provider takes. */
export interface CommonProviderOptions {
  /**
   * Release this provider's locks when the process ends normally (the event loop runs dry) or
   * on SIGINT or SIGTERM, without changing what the process does otherwise: after the release
   * (at most 2 s), a signal nobody else listens for is raised again. Default false. Not on
   * `process.exit()`, which ends the process at once. Most useful for Redis, whose keys would
   * otherwise stay until their lease ends; the OS frees file locks and the server ends a dead
   * process's PostgreSQL sessions anyway.
   */
  releaseOnExit?: boolean | undefined
  /**
   * The longest any lock of this provider may be held, in ms, unless an acquire says otherwise
   * (`maxHoldMs` there): then the lock is released and its handle's signal aborts. Default none.
   */
  maxHoldMs?: number | undefined
}

/** Calls a native factory whose only failures are the core's errors (a bad `DISTLOCK_DRIVER`). */
export function fromNative<T>(make: () => T): T {
  try {
    return make()
  } catch (err) {
    throw toLockError(err)
  }
}
