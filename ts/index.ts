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
import './debug'
export {
  AbortError,
  LockBackendError,
  LockClosedError,
  LockError,
  LockLostError,
  LockStateError,
  LockTimeoutError,
  SuppressedError,
  type BackendFacts,
  type LockErrorKind,
  type LockErrorOptions,
  type SuppressedErrorConstructor,
  type SuppressedErrorLike,
} from './errors'
export {
  DistributedLock,
  DistributedReaderWriterLock,
  DistributedSemaphore,
  type Lock,
  type ReaderWriterLock,
  type Semaphore,
  type LockedFn,
  type LockInfo,
} from './locks'
export { LockHandle, type Handle } from './handle'
export {
  type AbortSignalLike,
  type AcquireOptions,
  type SemaphoreAcquireOptions,
  type LockKind,
  type WaitOptions,
  type SemaphoreWaitOptions,
} from './options'
export {
  EtcdLockProvider,
  FileLockProvider,
  MemoryLockProvider,
  MySqlLockProvider,
  PostgresLockProvider,
  RedisLockProvider,
  type EtcdLockProviderOptions,
  type FileLockProviderOptions,
  type MySqlLockProviderOptions,
  type PostgresLockProviderOptions,
  type Pem,
  type RedisLockProviderOptions,
  type RedisTlsOptions,
} from './providers'
export { type CommonProviderOptions, type LockProvider } from './base-provider'
export {
  EtcdDistributedLock,
  FileDistributedLock,
  LockGuard,
  MemoryDistributedLock,
  MySqlDistributedLock,
  PostgresDistributedLock,
  RedisDistributedLock,
  type KeyedAcquireOptions,
  type LockConfig,
} from './keyed'
export {
  channels,
  type AcquireOutcome,
  type AcquireTrace,
  type ConnectionMessage,
  type RenewalFailureMessage,
  type ExtendTrace,
  type LostMessage,
  type ReleaseTrace,
  type StallMessage,
} from './diagnostics'
export { MultiLockHandle, type AcquireAllOptions, type MultiHandle } from './multi'
export {
  StaleFencingTokenError,
  fencedEval,
  fencedHset,
  fencedPut,
  fencedSet,
  fencedTxn,
  fencedWriteFile,
  fencingSql,
  redisFenceKey,
  withFencedTransaction,
  type EtcdBytes,
  type FenceOptions,
  type FencedEtcdDelete,
  type FencedEtcdPut,
  type FencedEtcdResult,
  type FencedEtcdWrite,
  type FencedEvalOptions,
  type FencedSetOptions,
  type FencedTransactionOptions,
  type FencingSql,
  type FencingSqlOptions,
  type IoRedisLike,
  type MySqlQueryable,
  type NodeRedisLike,
  type PgQueryable,
  type RedisClientLike,
  type RedisFenceOptions,
  type RedisValue,
  type SqlDialect,
  type SqlQueryable,
  type SqlStatement,
  type StaleFencingTokenErrorOptions,
} from './fencing'
