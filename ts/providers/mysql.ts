/** The MySQL and MariaDB provider: named locks (`GET_LOCK`). */
import native, { type NativeProvider } from '../native'
import { BaseProvider, type CommonProviderOptions } from '../base-provider'
import { typeName } from '../options'
import { invalidArgType, invalidArgValue, toLockError } from '../errors'
import { PROVIDER_KEYS, checkNumbers, checkOptions, checkStrings, tlsOptions, type RedisTlsOptions } from './common'

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
  checkOptions(options, PROVIDER_KEYS.mysql)
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
