/** The providers: one per backend, all implementing {@link LockProvider}. */
export { PROVIDER_KEYS, type Pem, type RedisTlsOptions } from './common'
export { EtcdLockProvider, type EtcdLockProviderOptions } from './etcd'
export { FileLockProvider, type FileLockProviderOptions } from './file'
export { MemoryLockProvider } from './memory'
export { MySqlLockProvider, type MySqlLockProviderOptions } from './mysql'
export { PostgresLockProvider, type PostgresLockProviderOptions } from './postgres'
export { RedisLockProvider, type RedisLockProviderOptions } from './redis'
