/** The providers: one per backend, all implementing {@link LockProvider}. */
import * as os from 'node:os'
import * as path from 'node:path'

import native, { type NativeProvider } from './native'
import { BaseProvider, fromNative, type CommonProviderOptions } from './base-provider'
import type { DistributedSemaphore } from './locks'
import { typeName } from './options'
import { checkKeys, invalidArgType, invalidArgValue, toLockError } from './errors'
import type { AcquireAllStrategy } from './multi'

/** The keys each provider's options may have. @internal */
const COMMON_KEYS = ['releaseOnExit', 'maxHoldMs'] as const

export const PROVIDER_KEYS = {
  file: ['directory', ...COMMON_KEYS],
  memory: [...COMMON_KEYS],
  postgres: [
    'connectionString',
    'maxConnections',
    'keepaliveMs',
    'opTimeoutMs',
    'connectTimeoutMs',
    'scope',
    'fencingSequence',
    ...COMMON_KEYS,
  ],
  redis: ['urls', 'leaseMs', 'extendEveryMs', 'keyPrefix', 'serverTimeoutMs', 'tls', 'autoRenew', ...COMMON_KEYS],
  mysql: [
    'connectionString',
    'maxConnections',
    'keepaliveMs',
    'opTimeoutMs',
    'connectTimeoutMs',
    'fencingTable',
    'fencing',
    'tls',
    ...COMMON_KEYS,
  ],
  etcd: [
    'endpoints',
    'leaseMs',
    'keyPrefix',
    'username',
    'password',
    'opTimeoutMs',
    'tls',
    'autoRenew',
    ...COMMON_KEYS,
  ],
} as const

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
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, PROVIDER_KEYS.file)
  const { directory = path.join(os.tmpdir(), 'distlock') } = options
  if (typeof directory !== 'string') {
    throw invalidArgType(`The "options.directory" property must be of type string. Received ${typeName(directory)}`)
  }
  if (directory === '') throw invalidArgValue('The "options.directory" property must be a non-empty path')
  return path.resolve(directory)
}

/** Options of {@link PostgresLockProvider}. */
export interface PostgresLockProviderOptions extends CommonProviderOptions {
  /**
   * A libpq-style connection string, URL (`postgres://user:password@host:5432/db?sslmode=verify-full`)
   * or `key=value` form. `sslmode` takes libpq's values: `disable`, `prefer` (the default) and
   * `require` encrypt without checking the certificate; `verify-ca` checks the chain and
   * `verify-full` also the host name, against the Mozilla roots plus `sslrootcert` (a PEM file).
   */
  connectionString: string
  /** At most this many server connections (1..1000, default 10). Held locks share them. */
  maxConnections?: number | undefined
  /**
   * Probe every session that holds locks this often (ms), with TCP keepalives and a TCP user
   * timeout to match; a session that does not answer within one period is closed and its locks'
   * signals abort. Default 5 000: a silent partition ends the held locks within about 10 s.
   */
  keepaliveMs?: number | undefined
  /**
   * The bound (ms) of every call that does not wait for a lock: a try (`timeoutMs: 0`, connect
   * included), `release`, `getInfo`. A session that does not answer within it is closed. Default
   * 5 000. An acquire with `timeoutMs: T` settles by T whatever the network does.
   */
  opTimeoutMs?: number | undefined
  /**
   * The bound (ms) of opening one server connection: TCP connect, TLS handshake and login.
   * Default 5 000, or the connection string's `connect_timeout` (in seconds, as libpq reads
   * it) when it has one; this option wins over both. A call that needs a new connection still
   * settles within its own budget (`opTimeoutMs` for a try, `timeoutMs` for an acquire).
   */
  connectTimeoutMs?: number | undefined
  /**
   * `'session'` (default): `pg_advisory_lock`, many locks per connection. `'transaction'`:
   * `pg_advisory_xact_lock` inside a transaction held open for the lock's lifetime, one connection
   * per held lock — the mode that works behind PgBouncer in transaction pooling.
   */
  scope?: 'session' | 'transaction' | undefined
  /**
   * The sequence fencing tokens come from, optionally schema-qualified. Created on first use if
   * missing (needs CREATE on the schema once). Default `distlock_fencing_token`.
   */
  fencingSequence?: string | undefined
}

/**
 * Locks on PostgreSQL advisory locks, with keys identical to .NET DistributedLock's. Connects
 * lazily; many held locks share a few sessions; a session that ends aborts its locks' signals.
 */
export class PostgresLockProvider extends BaseProvider {
  readonly #native: NativeProvider

  constructor(options: PostgresLockProviderOptions) {
    let nativeProvider
    try {
      nativeProvider = native.NativeProvider.postgres(postgresOptions(options))
    } catch (err) {
      throw toLockError(err)
    }
    super(nativeProvider, 'postgres', options)
    this.#native = nativeProvider
  }

  /** Server connections open now (held locks share them). */
  get connections(): number {
    return this.#native.connections ?? 0
  }

  /**
   * Of {@link connections}, those whose socket is read on the JS thread's event loop (every
   * session of a single-host server with the `'event-loop'` driver; 0 with `'runtime'`, or for
   * several hosts, `hostaddr` or a Unix socket, which tokio-postgres connects on its runtime).
   */
  get eventLoopConnections(): number {
    return this.#native.eventLoopConnections ?? 0
  }
}

function postgresOptions(options: PostgresLockProviderOptions): PostgresLockProviderOptions {
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, PROVIDER_KEYS.postgres)
  const { connectionString, maxConnections, keepaliveMs, opTimeoutMs, connectTimeoutMs, scope, fencingSequence } =
    options
  if (typeof connectionString !== 'string') {
    throw invalidArgType(
      `The "options.connectionString" property must be of type string. Received ${typeName(connectionString)}`,
    )
  }
  if (connectionString === '') throw invalidArgValue('The "options.connectionString" property must not be empty')
  for (const [key, value] of [
    ['maxConnections', maxConnections],
    ['keepaliveMs', keepaliveMs],
    ['opTimeoutMs', opTimeoutMs],
    ['connectTimeoutMs', connectTimeoutMs],
  ] as const) {
    if (value !== undefined && typeof value !== 'number') {
      throw invalidArgType(`The "options.${key}" property must be of type number. Received ${typeName(value)}`)
    }
  }
  for (const [key, value] of [
    ['scope', scope],
    ['fencingSequence', fencingSequence],
  ] as const) {
    if (value !== undefined && typeof value !== 'string') {
      throw invalidArgType(`The "options.${key}" property must be of type string. Received ${typeName(value)}`)
    }
  }
  return { connectionString, maxConnections, keepaliveMs, opTimeoutMs, connectTimeoutMs, scope, fencingSequence }
}

/** Options of {@link MySqlLockProvider}. */
export interface MySqlLockProviderOptions extends CommonProviderOptions {
  /**
   * The server: `mysql://user:password@host:3306/database` (or `mariadb://`), with the
   * `mysql_async` driver's query parameters, e.g. `?require_ssl=true` for TLS,
   * `&verify_identity=true` to check the host name. The database holds the fencing table.
   */
  connectionString: string
  /** The most server sessions the provider opens (1–1000; default 10). Held locks share them. */
  maxConnections?: number | undefined
  /**
   * How often sessions that hold locks are probed, in ms, and how long a probe may take
   * before the session is given up and its locks reported lost (default 1 000).
   */
  keepaliveMs?: number | undefined
  /** How long one statement (a try, a release, `getInfo`) may take, in ms (default 5 000). A try that needs a new session settles within it too. */
  opTimeoutMs?: number | undefined
  /** How long opening a session (TCP, TLS, login) may take, in ms (default 5 000). */
  connectTimeoutMs?: number | undefined
  /**
   * The table of fencing counters, `table` (in the URL's database) or `database.table`;
   * created on first use if missing (default `distlock_fencing`).
   */
  fencingTable?: string | undefined
  /**
   * Where fencing tokens come from. `'table'` (default): a counter per name in
   * {@link fencingTable}, written by every grant, so tokens keep growing across restarts and
   * failovers of a replicated server. `'uuid-short'`: the server's `UUID_SHORT()`, read in the
   * statement that takes the lock, with no write (a grant costs no commit): strictly increasing
   * on one server, across its restarts unless its clock is set back, but after a failover only
   * if the new server's `server_id` is larger.
   */
  fencing?: 'table' | 'uuid-short' | undefined
  /** TLS beyond the URL: certificates to trust instead of the built-in roots, a client certificate. */
  tls?: RedisTlsOptions | undefined
}

/**
 * Locks on MySQL 8 or MariaDB 10.6+ named locks (`GET_LOCK`): held by a server session, freed
 * by the server the moment that session ends. Lock names map to server names by the rule of
 * .NET DistributedLock's MySQL lock, so the two libraries exclude each other. There is no
 * reader-writer lock: named locks are exclusive ({@link createReaderWriterLock} throws).
 */
export class MySqlLockProvider extends BaseProvider {
  readonly #native: NativeProvider

  constructor(options: MySqlLockProviderOptions) {
    let nativeProvider
    try {
      nativeProvider = native.NativeProvider.mysql(mysqlOptions(options))
    } catch (err) {
      throw toLockError(err)
    }
    super(nativeProvider, 'mysql', options)
    this.#native = nativeProvider
  }

  /**
   * Throws: MySQL named locks are exclusive, so a reader-writer lock cannot let readers share
   * without capping them or starving writers. Use {@link createLock} or {@link createSemaphore}.
   */
  override createReaderWriterLock(name: string): never {
    throw invalidArgValue(
      `MySqlLockProvider has no reader-writer lock (asked for ${JSON.stringify(name)}): MySQL named locks (GET_LOCK) are exclusive, so readers could not share without capping them or starving writers; use createLock or createSemaphore`,
    )
  }

  /** Server sessions open now (held locks share them). */
  get connections(): number {
    return this.#native.connections ?? 0
  }

  /** Locks held through this provider now. */
  get heldCount(): number {
    return this.#native.heldCount ?? 0
  }
}

function mysqlOptions(options: MySqlLockProviderOptions) {
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, PROVIDER_KEYS.mysql)
  const { connectionString, maxConnections, keepaliveMs, opTimeoutMs, connectTimeoutMs, fencingTable, fencing, tls } =
    options
  if (typeof connectionString !== 'string') {
    throw invalidArgType(
      `The "options.connectionString" property must be of type string. Received ${typeName(connectionString)}`,
    )
  }
  if (connectionString === '') throw invalidArgValue('The "options.connectionString" property must not be empty')
  checkNumbers({ maxConnections, keepaliveMs, opTimeoutMs, connectTimeoutMs })
  checkStrings({ fencingTable, fencing })
  return {
    connectionString,
    maxConnections,
    keepaliveMs,
    opTimeoutMs,
    connectTimeoutMs,
    fencingTable,
    fencing,
    tls: tlsOptions(tls),
  }
}

/** Checks that each of `values` is a number when given. */
function checkNumbers(values: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(values)) {
    if (value !== undefined && typeof value !== 'number') {
      throw invalidArgType(`The "options.${key}" property must be of type number. Received ${typeName(value)}`)
    }
  }
}

/** Checks that each of `values` is a string when given. */
function checkStrings(values: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(values)) {
    if (value !== undefined && typeof value !== 'string') {
      throw invalidArgType(`The "options.${key}" property must be of type string. Received ${typeName(value)}`)
    }
  }
}

/** Options of {@link RedisLockProvider}. */
export interface RedisLockProviderOptions extends CommonProviderOptions {
  /**
   * The servers, as URLs. One URL is one deployment: a server (`redis://[user:password@]host:port/db`,
   * `rediss://` for TLS), a cluster (`redis-cluster://host:port?node=host2:port2&node=…`) or a
   * Sentinel group (`redis-sentinel://host:26379/0?sentinelServiceName=mymaster&node=…`).
   * Several URLs are independent servers for RedLock: a lock needs a majority of them.
   */
  urls: string | readonly string[]
  /** How long a lock lives on the server unless renewed, in ms (≥ 100; default 30 000). */
  leaseMs?: number | undefined
  /** How often held leases are renewed, in ms (default a third of `leaseMs`). */
  extendEveryMs?: number | undefined
  /** Prepended to every key (default `''`, which keeps keys identical to the `redlock` package's). */
  keyPrefix?: string | undefined
  /**
   * How long one server may take to answer one command, in ms (default 1 000), connect
   * included. It bounds a try (`timeoutMs: 0`), `release`, `extend` and, per server,
   * `getInfo`. An acquire with `timeoutMs: T` settles by T whatever the network does; a
   * failure that may pass (a reset, a stalled or restarting server) is retried until then.
   */
  serverTimeoutMs?: number | undefined
  /** TLS for the `rediss://` servers, beyond the system's roots. */
  tls?: RedisTlsOptions | undefined
  /**
   * Whether held leases are renewed in the background (default true). With `false` a lock
   * ends `leaseMs` after its grant unless `handle.extend()` moves it; an acquire's
   * `autoRenew` overrides this.
   */
  autoRenew?: boolean | undefined
}

/** PEM text or a Buffer holding it. */
export type Pem = string | Buffer

/** TLS options of {@link RedisLockProviderOptions}, shaped like `tls.connect`'s. */
export interface RedisTlsOptions {
  /**
   * The certificates to trust (PEM; several in one string, or a list). They replace the
   * system's roots, as `ca` does in Node's `tls.connect`. Default: the system's roots, or
   * `SSL_CERT_FILE`.
   */
  ca?: Pem | readonly Pem[] | undefined
  /** A client certificate chain (PEM), for servers that check clients (`tls-auth-clients`). */
  cert?: Pem | undefined
  /** The private key of `cert` (PEM, unencrypted). */
  key?: Pem | undefined
}

/**
 * Locks on Redis: leases renewed in the background, waiters woken by the release (pub/sub) in
 * arrival order, fencing tokens from a per-name counter, and a mutex layout compatible with the
 * `redlock` npm package.
 */
export class RedisLockProvider extends BaseProvider {
  readonly #native: NativeProvider
  readonly #redlock: boolean

  constructor(options: RedisLockProviderOptions) {
    let nativeProvider
    let checked
    try {
      checked = redisOptions(options)
      nativeProvider = native.NativeProvider.redis(checked)
    } catch (err) {
      throw toLockError(err)
    }
    super(nativeProvider, 'redis', options)
    this.#native = nativeProvider
    this.#redlock = checked.urls.length > 1
  }

  /**
   * A semaphore on one Redis deployment. Throws a `RangeError` on RedLock (several URLs): a count
   * cannot be bounded by quorums of independent servers.
   */
  override createSemaphore(name: string, maxCount: number): DistributedSemaphore {
    if (this.#redlock) {
      throw invalidArgValue(
        `RedisLockProvider has no semaphore on RedLock (asked for ${JSON.stringify(name)}): its urls are independent servers, and a count cannot be bounded by RedLock quorums; use one Redis deployment (a server, a cluster or a Sentinel group)`,
      )
    }
    return super.createSemaphore(name, maxCount)
  }

  /**
   * RedLock takes `acquireAll`'s locks together: every lock's attempt goes out in the same round
   * (one round trip per server), and the round is kept only if every lock won its quorum.
   * @internal
   */
  protected override get acquireAllStrategy(): AcquireAllStrategy {
    return this.#redlock ? 'together' : 'ordered'
  }

  /** Locks held through this provider now. */
  get heldCount(): number {
    return this.#native.heldCount ?? 0
  }

  /**
   * Scripts sent so far on the connections this provider keeps on the JS thread's event loop
   * (one plain TCP server or RedLock servers; 0 with the `'runtime'` driver, TLS, Cluster or
   * Sentinel, whose calls go through the background client).
   */
  get eventLoopScripts(): number {
    return this.#native.eventLoopScripts ?? 0
  }

  /** Lease renewals sent so far, and the scripts (round trips per server) that carried them. */
  get renewalStats(): {
    /** Lease renewals sent. */
    renewals: number
    /** Scripts that carried them (one round trip per server each). */
    scripts: number
  } {
    const [renewals = 0, scripts = 0] = this.#native.renewalStats ?? []
    return { renewals, scripts }
  }

  /**
   * Deletes the fencing counters (`…:distlock:fence`, one per name ever locked, never expiring)
   * of this provider's names (under its `keyPrefix`) that nobody holds, reads, waits on or is
   * acquiring right now, on every server (every primary of a cluster), and resolves to how
   * many. Safe while other clients use the names: each counter is checked and deleted in one
   * script. Tokens still never go backwards: a deleted counter starts again at the server's
   * clock in microseconds, above every token it handed out. Run it from time to time (a daily
   * job), not in a tight loop: it `SCAN`s the whole keyspace.
   */
  async removeUnusedFenceKeys(): Promise<number> {
    try {
      return await this.#native.removeUnused()
    } catch (err) {
      throw toLockError(err)
    }
  }
}

function redisOptions(options: RedisLockProviderOptions) {
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, PROVIDER_KEYS.redis)
  const { urls, leaseMs, extendEveryMs, keyPrefix, serverTimeoutMs, tls } = options
  const list = typeof urls === 'string' ? [urls] : urls
  if (!Array.isArray(list) || list.some((u) => typeof u !== 'string')) {
    throw invalidArgType(
      `The "options.urls" property must be a string or an array of strings. Received ${typeName(urls)}`,
    )
  }
  for (const [key, value] of [
    ['leaseMs', leaseMs],
    ['extendEveryMs', extendEveryMs],
    ['serverTimeoutMs', serverTimeoutMs],
  ] as const) {
    if (value !== undefined && typeof value !== 'number') {
      throw invalidArgType(`The "options.${key}" property must be of type number. Received ${typeName(value)}`)
    }
  }
  if (keyPrefix !== undefined && typeof keyPrefix !== 'string') {
    throw invalidArgType(`The "options.keyPrefix" property must be of type string. Received ${typeName(keyPrefix)}`)
  }
  return { urls: [...list] as string[], leaseMs, extendEveryMs, keyPrefix, serverTimeoutMs, tls: tlsOptions(tls) }
}

/** PEM text from a string or a Buffer; `key` names the option in errors. */
function pem(key: string, value: unknown): string | undefined {
  if (value === undefined) return undefined
  if (typeof value === 'string') return value
  if (Buffer.isBuffer(value)) return value.toString('utf8')
  throw invalidArgType(`The "options.tls.${key}" property must be a string or a Buffer. Received ${typeName(value)}`)
}

/** Checks the Redis TLS options and turns them into PEM text for the native side. */
function tlsOptions(tls: unknown): { ca?: string[]; cert?: string; key?: string } | undefined {
  if (tls === undefined) return undefined
  if (tls === null || typeof tls !== 'object') {
    throw invalidArgType(`The "options.tls" property must be of type object. Received ${typeName(tls)}`)
  }
  checkKeys(tls, ['ca', 'cert', 'key'], 'options.tls')
  const { ca, cert, key } = tls as RedisTlsOptions
  const caList = ca === undefined ? undefined : (Array.isArray(ca) ? ca : [ca]).map((c) => pem('ca', c)!)
  return { ca: caList, cert: pem('cert', cert), key: pem('key', key) }
}

/** Options of {@link EtcdLockProvider}. */
export interface EtcdLockProviderOptions extends CommonProviderOptions {
  /**
   * The cluster's client endpoints (`http://host:2379`, `https://` for TLS); the client
   * balances over them and fails over when one goes down.
   */
  endpoints: string | readonly string[]
  /**
   * The TTL of the lease the locks hang on, in ms (etcd counts whole seconds, so it is rounded
   * up; 2 000 to 86 400 000; default 30 000). The lease is kept alive in the background.
   */
  leaseMs?: number | undefined
  /** Prepended to every key (default `'distlock/'`). */
  keyPrefix?: string | undefined
  /** A user name for etcd authentication (with `password`). */
  username?: string | undefined
  /** The password of `username`. */
  password?: string | undefined
  /** How long one request (a try, a release, `getInfo`) may take, in ms (default 5 000). */
  opTimeoutMs?: number | undefined
  /** TLS for `https://` endpoints, beyond the system's roots. */
  tls?: RedisTlsOptions | undefined
  /**
   * Whether the lease is kept alive in the background (default true). With `false` each lock
   * gets a lease of its own that ends `leaseMs` after the grant unless `handle.extend()` keeps it.
   */
  autoRenew?: boolean | undefined
}

/**
 * Locks on etcd v3: consensus-backed, FIFO by create revision, held by a lease kept alive in
 * the background. The fencing token is the lock key's create revision, which the whole
 * cluster agrees on: pass it to the storage you write, and have it reject smaller tokens.
 */
export class EtcdLockProvider extends BaseProvider {
  readonly #native: NativeProvider

  constructor(options: EtcdLockProviderOptions) {
    let nativeProvider
    try {
      nativeProvider = native.NativeProvider.etcd(etcdOptions(options))
    } catch (err) {
      throw toLockError(err)
    }
    super(nativeProvider, 'etcd', options)
    this.#native = nativeProvider
  }

  /** Locks held through this provider now. */
  get heldCount(): number {
    return this.#native.heldCount ?? 0
  }
}

function etcdOptions(options: EtcdLockProviderOptions) {
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, PROVIDER_KEYS.etcd)
  const { endpoints, leaseMs, keyPrefix, username, password, opTimeoutMs, tls } = options
  const list = typeof endpoints === 'string' ? [endpoints] : endpoints
  if (!Array.isArray(list) || list.some((u) => typeof u !== 'string')) {
    throw invalidArgType(
      `The "options.endpoints" property must be a string or an array of strings. Received ${typeName(endpoints)}`,
    )
  }
  checkNumbers({ leaseMs, opTimeoutMs })
  checkStrings({ keyPrefix, username, password })
  return {
    endpoints: [...list] as string[],
    leaseMs,
    keyPrefix,
    username,
    password,
    opTimeoutMs,
    tls: tlsOptions(tls),
  }
}

/**
 * Locks inside this process only, with the same interface, semantics and errors as the other
 * providers (FIFO waiting, reader-writer locks with writer preference, semaphores, fencing
 * tokens, timeouts, `AbortSignal`, `close()`): for unit tests that should not need a server.
 * Locks have no lease and are lost only when the provider is closed.
 */
export class MemoryLockProvider extends BaseProvider {
  constructor(options: CommonProviderOptions = {}) {
    if (options === null || typeof options !== 'object') {
      throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
    }
    checkKeys(options, PROVIDER_KEYS.memory)
    super(
      fromNative(() => native.NativeProvider.memory()),
      'memory',
      options,
    )
  }
}
