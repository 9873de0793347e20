/**
 * distlock: distributed locks for Node.js with a Rust core.
 *
 * ```ts
 * import { FileLockProvider } from 'distlock'
 * const locks = new FileLockProvider({ directory: '/var/lock/myapp' })
 * await using handle = await locks.createLock('orders:42').acquire({ timeoutMs: 5_000 })
 * ```
 * @packageDocumentation
 */
export { AbortError, LockBackendError, LockClosedError, LockError, LockLostError, LockTimeoutError } from './errors'
export {
  DistributedLock,
  DistributedReaderWriterLock,
  DistributedSemaphore,
  LockHandle,
  type AcquireOptions,
  type LockedFn,
} from './locks'
export {
  FileLockProvider,
  PostgresLockProvider,
  RedisLockProvider,
  type FileLockProviderOptions,
  type LockProvider,
  type PostgresLockProviderOptions,
  type RedisLockProviderOptions,
} from './providers'
