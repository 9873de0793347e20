/** The providers: one per backend, all implementing {@link LockProvider}. */
import * as os from 'node:os'
import * as path from 'node:path'

import native, { type NativeProvider } from './native'
import {
  closedError,
  DistributedLock,
  DistributedReaderWriterLock,
  DistributedSemaphore,
  type LockSource,
} from './locks'
import { invalidArgType, invalidArgValue, toLockError } from './errors'
import { typeName } from './locks'

/** What every provider offers, so application code can swap backends (and tests can pass a fake). */
export interface LockProvider extends AsyncDisposable {
  /** An exclusive lock on `name`. */
  createLock(name: string): DistributedLock
  /** A reader-writer lock on `name`. */
  createReaderWriterLock(name: string): DistributedReaderWriterLock
  /** A semaphore on `name` admitting `maxCount` holders at once. */
  createSemaphore(name: string, maxCount: number): DistributedSemaphore
  /** Rejects pending waits, releases held locks (their signals abort) and frees resources. */
  close(): Promise<void>
}

/** Shared plumbing of the providers. */
abstract class BaseProvider implements LockProvider {
  readonly #source: LockSource

  /** @internal */
  protected constructor(nativeProvider: NativeProvider, backend: string) {
    this.#source = {
      native: nativeProvider,
      backend,
      assertOpen() {
        if (nativeProvider.isClosed) throw closedError(backend)
      },
    }
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

  async close(): Promise<void> {
    try {
      await this.#source.native.close()
    } catch (err) {
      throw toLockError(err)
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/** Options of {@link FileLockProvider}. */
export interface FileLockProviderOptions {
  /**
   * The directory holding the lock files; created on first use if missing. Every process that
   * must exclude the others uses the same directory. Defaults to `<os.tmpdir()>/distlock`.
   */
  directory?: string
}

/**
 * Locks on OS file locks (`flock` on Unix, `LockFileEx` on Windows) in one directory: across
 * the processes of one machine, freed by the OS the moment a holder dies.
 */
export class FileLockProvider extends BaseProvider {
  /** The lock directory, resolved to an absolute path. */
  readonly directory: string

  constructor(options: FileLockProviderOptions = {}) {
    const directory = fileDirectory(options)
    super(new native.NativeFileProvider(directory), 'file')
    this.directory = directory
  }
}

/** Validates the options and returns the absolute lock directory. */
function fileDirectory(options: FileLockProviderOptions): string {
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  const { directory = path.join(os.tmpdir(), 'distlock') } = options
  if (typeof directory !== 'string') {
    throw invalidArgType(`The "options.directory" property must be of type string. Received ${typeName(directory)}`)
  }
  if (directory === '') throw invalidArgValue('The "options.directory" property must be a non-empty path')
  return path.resolve(directory)
}
