/**
 * Fencing at the resource: guards that make a write to your own storage conditional on the
 * lock's fencing token, atomically on the storage side, so a holder that lost its lock without
 * knowing it (a lease that ran out while it was paused) cannot overwrite a later holder's work.
 */
export { StaleFencingTokenError, type StaleFencingTokenErrorOptions } from './error'
export {
  fencingSql,
  withFencedTransaction,
  type FenceOptions,
  type FencedTransactionOptions,
  type FencingSql,
  type FencingSqlOptions,
  type MySqlQueryable,
  type PgQueryable,
  type SqlDialect,
  type SqlQueryable,
  type SqlStatement,
} from './sql'
export {
  fencedEval,
  fencedHset,
  fencedSet,
  redisFenceKey,
  type FencedEvalOptions,
  type FencedSetOptions,
  type IoRedisLike,
  type NodeRedisLike,
  type RedisClientLike,
  type RedisFenceOptions,
  type RedisValue,
} from './redis'
export { fencedWriteFile } from './file'
export {
  fencedPut,
  fencedTxn,
  type EtcdBytes,
  type FencedEtcdDelete,
  type FencedEtcdPut,
  type FencedEtcdResult,
  type FencedEtcdWrite,
} from './etcd'
