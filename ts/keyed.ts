/**
 * Keyed lock classes: one object, many keys, a config with the TTL and the retry budget, and a
 * guard back — the shape other TypeScript lock libraries use. Thin wrappers over the providers:
 * every call is one provider call, with the provider's semantics (event-driven waiting, lost
 * signals, fencing tokens).
 */
import { LockTimeoutError, checkKeys, invalidArgType, invalidArgValue } from './errors'
import { withHeld, type LockHandle } from './handle'
import type { DistributedLock, LockInfo } from './locks'
import type { LockProvider } from './base-provider'
import type { AcquireAllOptions, MultiLockHandle } from './multi'
import { checkSignal, typeName, type AbortSignalLike } from './options'
import {
  FileLockProvider,
  MemoryLockProvider,
  PostgresLockProvider,
  PROVIDER_KEYS,
  RedisLockProvider,
  MySqlLockProvider,
  EtcdLockProvider,
  type MySqlLockProviderOptions,
  type EtcdLockProviderOptions,
  type FileLockProviderOptions,
  type PostgresLockProviderOptions,
  type RedisLockProviderOptions,
} from './providers'

/** How keyed locks acquire. */
export interface LockConfig {
  /**
   * The lease of each grant in ms (default 30 000): Redis keys expire after it unless renewed
   * (they are renewed while held). File, PostgreSQL and memory locks do not expire while held.
   */
  ttlMs?: number | undefined
  /**
   * With `maxRetries`, the wait budget of `acquire`: `retryIntervalMs × maxRetries` ms (defaults
   * 100 × 10 = 1 s). Waiting itself is event-driven (a release wakes the next waiter); these only
   * bound how long it may take. `maxRetries: 0` means no waiting at all.
   */
  retryIntervalMs?: number | undefined
  /** See `retryIntervalMs`. */
  maxRetries?: number | undefined
}

/** Per-call options of the keyed classes. */
export interface KeyedAcquireOptions {
  /** Cancels the wait (rejects with `AbortError`; nothing stays held). */
  signal?: AbortSignalLike | undefined
  /** This grant's lease in ms, instead of the config's `ttlMs`. */
  ttlMs?: number | undefined
}

/** A held key. Release it with `release()` or `await using`. */
export class LockGuard implements AsyncDisposable {
  /** The key this guard holds. */
  readonly key: string
  /** A string unique to this grant of the key: the fencing token in decimal. */
  readonly token: string
  /** The underlying handle of the provider API. */
  readonly handle: LockHandle

  /** @internal */
  constructor(key: string, handle: LockHandle) {
    this.key = key
    this.handle = handle
    this.token = handle.fencingToken.toString()
  }

  /** Strictly greater than every earlier grant's of the key: pass it to the storage you write. */
  get fencingToken(): bigint {
    return this.handle.fencingToken
  }

  /** Aborts with `LockLostError` the moment the key is known lost. */
  get signal(): AbortSignal {
    return this.handle.signal
  }

  /** Whether the key is held right now, checked against the clock when read (see `LockHandle.isHeld`). */
  get isHeld(): boolean {
    return this.handle.isHeld
  }

  /** Throws `LockLostError` when the key is not held (see `LockHandle.assertHeld`). */
  assertHeld(): void {
    this.handle.assertHeld()
  }

  /** Releases the key; idempotent. */
  release(): Promise<void> {
    return this.handle.release()
  }

  /** Sets the lease to `ttlMs` from now (Redis; a no-op where locks have no lease). */
  extend(ttlMs: number): Promise<void> {
    return this.handle.extend(ttlMs)
  }

  /** Releases the key at the end of an `await using` block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release()
  }
}

function checkWhole(name: string, value: unknown, min: number): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number') {
    throw invalidArgType(`The "options.${name}" property must be of type number. Received ${typeName(value)}`)
  }
  if (!Number.isInteger(value) || value < min) {
    throw invalidArgValue(`The "options.${name}" property must be a whole number >= ${min}. Received ${value}`)
  }
  return value
}

/** What the keyed classes need of their provider: one of distlock's own. */
interface OwnProvider extends LockProvider {
  createLock(name: string): DistributedLock
  tryAcquireAll(names: readonly string[], options?: AcquireAllOptions): Promise<MultiLockHandle | null>
}

/** What the keyed classes share. */
abstract class KeyedLock<P extends OwnProvider> implements AsyncDisposable {
  /** The provider underneath, for everything the keyed API does not cover. */
  readonly provider: P
  /** The lease of each grant, in ms. */
  readonly ttlMs: number
  /** How long `acquire` may wait, in ms (`retryIntervalMs × maxRetries`). */
  readonly waitBudgetMs: number

  /** @internal */
  protected constructor(provider: P, config: LockConfig) {
    this.provider = provider
    this.ttlMs = checkWhole('ttlMs', config.ttlMs, 100) ?? 30_000
    const interval = checkWhole('retryIntervalMs', config.retryIntervalMs, 0) ?? 100
    const retries = checkWhole('maxRetries', config.maxRetries, 0) ?? 10
    this.waitBudgetMs = interval * retries
  }

  /**
   * Acquires `key`, waiting at most the retry budget. Rejects with `LockTimeoutError` whose
   * `kind` is `'timeout'`, or `'already_locked'` when the budget is 0.
   */
  async acquire(key: string, options: KeyedAcquireOptions = {}): Promise<LockGuard> {
    checkCallOptions(options)
    const handle = await this.provider
      .createLock(key)
      .tryAcquire({ timeoutMs: this.waitBudgetMs, signal: options.signal, leaseMs: options.ttlMs ?? this.ttlMs })
    if (handle) return new LockGuard(key, handle)
    throw this.waitBudgetMs === 0
      ? new LockTimeoutError(`The key ${JSON.stringify(key)} is already locked`, { kind: 'already_locked' })
      : new LockTimeoutError(`Timed out after ${this.waitBudgetMs} ms waiting for the key ${JSON.stringify(key)}`)
  }

  /** One attempt: a guard, or `null` when the key is held. */
  async tryAcquire(key: string, options: KeyedAcquireOptions = {}): Promise<LockGuard | null> {
    checkCallOptions(options)
    const handle = await this.provider
      .createLock(key)
      .tryAcquire({ timeoutMs: 0, signal: options.signal, leaseMs: options.ttlMs ?? this.ttlMs })
    return handle && new LockGuard(key, handle)
  }

  /**
   * Acquires every one of `keys` (distinct) in their UTF-8 byte order, within one retry budget;
   * on failure releases those it took. Rejects like {@link acquire}.
   */
  async acquireAll(keys: readonly string[], options: KeyedAcquireOptions = {}): Promise<MultiLockHandle> {
    checkCallOptions(options)
    const all = await this.provider.tryAcquireAll(keys, {
      timeoutMs: this.waitBudgetMs,
      signal: options.signal,
      leaseMs: options.ttlMs ?? this.ttlMs,
    })
    if (all) return all
    throw this.waitBudgetMs === 0
      ? new LockTimeoutError(`One of the keys ${JSON.stringify(keys)} is already locked`, { kind: 'already_locked' })
      : new LockTimeoutError(`Timed out after ${this.waitBudgetMs} ms waiting for the keys ${JSON.stringify(keys)}`)
  }

  /** Whether `key` is held now, by anyone (a snapshot, for monitoring). */
  isLocked(key: string): Promise<boolean> {
    return this.provider.createLock(key).isLocked()
  }

  /** A snapshot of `key`'s state. */
  getInfo(key: string): Promise<LockInfo> {
    return this.provider.createLock(key).getInfo()
  }

  /** Sets `guard`'s lease to `ttlMs` (default the config's) from now. */
  extend(guard: LockGuard, ttlMs: number = this.ttlMs): Promise<void> {
    if (!(guard instanceof LockGuard)) {
      throw invalidArgType(`The "guard" argument must be an instance of LockGuard. Received ${typeName(guard)}`)
    }
    return guard.extend(ttlMs)
  }

  /** Runs `fn` holding `key`, releasing it afterwards. */
  async withLock<T>(key: string, fn: (guard: LockGuard) => T | Promise<T>): Promise<T> {
    if (typeof fn !== 'function') {
      throw invalidArgType(`The "fn" argument must be of type function. Received ${typeName(fn)}`)
    }
    const guard = await this.acquire(key)
    return withHeld(guard, fn, guard.handle.description)
  }

  /** Closes the provider underneath. */
  close(): Promise<void> {
    return this.provider.close()
  }

  /** Closes the provider underneath at the end of an `await using` block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

const CONFIG_KEYS = ['ttlMs', 'retryIntervalMs', 'maxRetries'] as const

/** Checks a keyed class's options: the config's keys plus those of its provider (`extra`). */
function configOf(options: unknown, extra: readonly string[]): LockConfig {
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, [...extra, ...CONFIG_KEYS])
  return options as LockConfig
}

function checkCallOptions(options: unknown): void {
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, ['signal', 'ttlMs'])
  checkSignal((options as KeyedAcquireOptions).signal, 'options.signal')
}

/** Keyed locks on Redis; `ttlMs` is the lease (renewed while held). */
export class RedisDistributedLock extends KeyedLock<RedisLockProvider> {
  constructor(options: RedisLockProviderOptions & LockConfig) {
    const config = configOf(options, PROVIDER_KEYS.redis)
    const { ttlMs, retryIntervalMs: _i, maxRetries: _m, ...rest } = options
    super(new RedisLockProvider({ leaseMs: ttlMs, ...rest }), config)
  }
}

/** Keyed locks on PostgreSQL advisory locks. */
export class PostgresDistributedLock extends KeyedLock<PostgresLockProvider> {
  constructor(options: PostgresLockProviderOptions & LockConfig) {
    const config = configOf(options, PROVIDER_KEYS.postgres)
    const { ttlMs: _t, retryIntervalMs: _i, maxRetries: _m, ...rest } = options
    super(new PostgresLockProvider(rest), config)
  }
}

/** Keyed locks on MySQL or MariaDB named locks. */
export class MySqlDistributedLock extends KeyedLock<MySqlLockProvider> {
  constructor(options: MySqlLockProviderOptions & LockConfig) {
    const config = configOf(options, PROVIDER_KEYS.mysql)
    const { ttlMs: _t, retryIntervalMs: _i, maxRetries: _m, ...rest } = options
    super(new MySqlLockProvider(rest), config)
  }
}

/** Keyed locks on etcd; `ttlMs` is the lease (`leaseMs`). */
export class EtcdDistributedLock extends KeyedLock<EtcdLockProvider> {
  constructor(options: Omit<EtcdLockProviderOptions, 'leaseMs'> & LockConfig) {
    const config = configOf(options, PROVIDER_KEYS.etcd)
    const { ttlMs, retryIntervalMs: _i, maxRetries: _m, ...rest } = options
    super(new EtcdLockProvider({ leaseMs: ttlMs, ...rest }), config)
  }
}

/** Keyed locks on OS file locks in one directory. */
export class FileDistributedLock extends KeyedLock<FileLockProvider> {
  constructor(options: FileLockProviderOptions & LockConfig = {}) {
    const config = configOf(options, PROVIDER_KEYS.file)
    const { ttlMs: _t, retryIntervalMs: _i, maxRetries: _m, ...rest } = options
    super(new FileLockProvider(rest), config)
  }
}

/**
 * Keyed locks inside this process, for tests. Each instance has its own locks unless several
 * are given the same `provider`, e.g. to stand for two services contending.
 */
export class MemoryDistributedLock extends KeyedLock<MemoryLockProvider> {
  constructor(options: LockConfig & { provider?: MemoryLockProvider } = {}) {
    const config = configOf(options, ['provider'])
    if (options.provider !== undefined && !(options.provider instanceof MemoryLockProvider)) {
      throw invalidArgType(
        `The "options.provider" property must be an instance of MemoryLockProvider. Received ${typeName(options.provider)}`,
      )
    }
    super(options.provider ?? new MemoryLockProvider(), config)
  }
}
