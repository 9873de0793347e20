/** The file provider: OS file locks in one directory. */
import * as os from 'node:os'
import * as path from 'node:path'

import native, { type NativeProvider } from '../native'
import { BaseProvider, fromNative, type CommonProviderOptions } from '../base-provider'
import { typeName } from '../options'
import { invalidArgType, invalidArgValue, toLockError } from '../errors'
import { PROVIDER_KEYS, checkOptions } from './common'

/** Options of {@link FileLockProvider}. */
export interface FileLockProviderOptions extends CommonProviderOptions {
  /**
   * The directory holding the lock files; created on first use if missing. Every process that
   * must exclude the others uses the same directory. Defaults to `<os.tmpdir()>/distlock`.
   */
  directory?: string | undefined
}

/**
 * Locks on OS file locks (`flock` on Unix, `LockFileEx` on Windows) in one directory: across
 * the processes of one machine, freed by the OS the moment a holder dies.
 */
export class FileLockProvider extends BaseProvider {
  /** The lock directory, resolved to an absolute path. */
  readonly directory: string
  readonly #native: NativeProvider

  constructor(options: FileLockProviderOptions = {}) {
    const directory = fileDirectory(options)
    const nativeProvider = fromNative(() => native.NativeProvider.file(directory))
    super(nativeProvider, 'file', options)
    this.#native = nativeProvider
    this.directory = directory
  }

  /**
   * The path of the lock file of `name`: the file that {@link FileLockProvider.createLock} and
   * {@link FileLockProvider.createReaderWriterLock} lock (exclusively for a lock or a writer,
   * shared for a reader). A `flock(1)` or `flock(2)` user of this path excludes distlock's
   * lockers of `name` both ways. A semaphore's files are this path with `.lock` replaced by
   * `.sem0` … `.sem<maxCount-1>` (its slots) and `.semtoken` (its fencing counter). The file
   * may not exist yet: it is created by the first acquire. The name mapping is in the README.
   *
   * ```ts
   * new FileLockProvider({ directory: '/var/lock/app' }).lockFilePath('orders:42')
   * // '/var/lock/app/orders_42-0fa4753944a29a4c.lock'
   * ```
   * @throws RangeError (`ERR_INVALID_ARG_VALUE`) for a name no lock can have (empty, or over
   * 1 024 bytes in UTF-8).
   */
  lockFilePath(name: string): string {
    if (typeof name !== 'string') {
      throw invalidArgType(`The "name" argument must be of type string. Received ${typeName(name)}`)
    }
    try {
      return native.fileLockPath(this.directory, name)
    } catch (err) {
      throw toLockError(err)
    }
  }

  /**
   * Removes the lock files of names that nobody holds right now, and resolves to how many it
   * removed. A file is removed only while this call holds its exclusive lock. Safe against
   * distlock lockers only: every distlock acquire re-checks, once granted, that the path still
   * names the file it locked (device and inode) and locks the path again if not. Not safe while
   * another program locks these files (`flock(1)`, `flock(2)`, Python's `fcntl.flock`): such a
   * program opens the file and then locks it without that check, so if the file is removed in
   * between, it holds a lock on a removed file while distlock locks a new one, and both run.
   * Only files named as distlock names them are touched. The directory grows by one small file
   * per name ever locked (plus one per semaphore slot): run this from time to time (a daily
   * job), not in a tight loop.
   */
  async removeUnusedLockFiles(): Promise<number> {
    try {
      return await this.#native.removeUnused()
    } catch (err) {
      throw toLockError(err)
    }
  }
}

/** Validates the options and returns the absolute lock directory. */
function fileDirectory(options: FileLockProviderOptions): string {
  checkOptions(options, PROVIDER_KEYS.file)
  const { directory = path.join(os.tmpdir(), 'distlock') } = options
  if (typeof directory !== 'string') {
    throw invalidArgType(`The "options.directory" property must be of type string. Received ${typeName(directory)}`)
  }
  if (directory === '') throw invalidArgValue('The "options.directory" property must be a non-empty path')
  return path.resolve(directory)
}
