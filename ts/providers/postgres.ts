/** The PostgreSQL provider: session (or transaction) advisory locks. */
import native, { type NativeProvider } from '../native'
import { BaseProvider, type CommonProviderOptions } from '../base-provider'
import { typeName } from '../options'
import { invalidArgType, invalidArgValue, toLockError } from '../errors'
import { PROVIDER_KEYS, checkOptions } from './common'

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
  checkOptions(options, PROVIDER_KEYS.postgres)
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
