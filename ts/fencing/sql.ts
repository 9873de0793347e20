/**
 * The SQL guard: a transaction that first claims the resource's row of a fence table, so that
 * it commits only if its fencing token is not below the largest one the table has seen.
 */
import { SuppressedError, checkKeys, invalidArgType, invalidArgValue } from '../errors'
import { typeName } from '../options'
import { StaleFencingTokenError, checkResource, checkToken, parseStored } from './error'

/** The SQL dialects of the guard: PostgreSQL, and MySQL or MariaDB. */
export type SqlDialect = 'postgres' | 'mysql'

/**
 * A PostgreSQL connection as `pg` shapes it (a `Client`, or a `PoolClient` from
 * `await pool.connect()`): `query(text, values)` with `$1` placeholders resolves to `{ rows }`.
 */
export interface PgQueryable {
  /** Runs one statement. */
  query(
    text: string,
    values?: any[],
  ): Promise<{
    /** The rows the statement returned. */
    rows: any[]
  }>
}

/**
 * A MySQL or MariaDB connection as `mysql2/promise` shapes it (`createConnection`, or
 * `await pool.getConnection()`): `query(sql, values)` with `?` placeholders resolves to
 * `[rows, fields]`.
 */
export interface MySqlQueryable {
  /** Runs one statement. */
  query(sql: string, values?: any): Promise<[any, any]>
}

/** A connection {@link withFencedTransaction} can run a transaction on. */
export type SqlQueryable = PgQueryable | MySqlQueryable

/** Where a fence lives: the resource, the token of the write, and the table. */
export interface FenceOptions {
  /** What the transaction writes, e.g. `'invoice:42'`: a non-empty string of at most 1 024 UTF-8 bytes. */
  resource: string
  /** The writer's fencing token: `handle.fencingToken`. */
  token: bigint
  /**
   * The fence table: a name like `distlock_fence` or `app.fences` (letters, digits and `_`,
   * at most 63 characters, optionally one `schema.` in front). Created on first use with
   * `CREATE TABLE IF NOT EXISTS`. Default `distlock_fence`.
   */
  table?: string
}

/** What {@link withFencedTransaction} takes. */
export interface FencedTransactionOptions extends FenceOptions {
  /**
   * The client's SQL dialect. Default: read from the client, a `pg` client (it has
   * `escapeIdentifier`) or a `mysql2/promise` connection (it has `execute` and
   * `beginTransaction`); required for any other client of the same `query` shape.
   */
  dialect?: SqlDialect
}

/** What {@link fencingSql} takes. */
export interface FencingSqlOptions extends FenceOptions {
  /** The SQL dialect of the statements: `$1` placeholders for PostgreSQL, `?` for MySQL. */
  dialect: SqlDialect
}

/** One statement and its parameters, in the dialect's placeholder style. */
export interface SqlStatement {
  /** The statement, with `$1`, `$2` (PostgreSQL) or `?` (MySQL) placeholders. */
  text: string
  /** The parameters in placeholder order: the resource, then the token as a decimal string. */
  values: string[]
}

/** The guard's statements; {@link fencingSql} says how to run them. */
export interface FencingSql {
  /** Creates the fence table if it does not exist (no parameters). Run it once, outside a transaction. */
  create: SqlStatement
  /** Inserts the resource's row, or raises its token to this one: the row stays locked until the transaction ends. */
  claim: SqlStatement
  /** Reads the row back as one row with one column, `current`: a decimal string. */
  check: SqlStatement
}

/** The fence table when the options name none. */
const DEFAULT_TABLE = 'distlock_fence'
/** A table name, optionally schema-qualified; 63 is PostgreSQL's identifier limit (MySQL's is 64). */
const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$/
/**
 * How many times a claim that lost a deadlock or a serialization race is tried in all. Only
 * the claim is retried, before the callback ran: two first writers of a resource can deadlock
 * on MySQL's insert of the same new key, and the loser's BEGIN…claim is safe to run again.
 */
const CLAIM_ATTEMPTS = 3

/**
 * The guard's SQL, for clients and ORMs that {@link withFencedTransaction} does not take. In
 * your own transaction, run `claim`, then `check`; go on only if the `current` it returns
 * equals your token, else roll back (a later holder has written). Run `create` once before.
 *
 * `claim` raises the row's token to the larger of the stored one and yours and keeps the row
 * locked until the transaction ends, so a later holder's transaction waits for yours and two
 * writers cannot both pass: a write is accepted when its token is at least the largest token
 * seen for the resource (equal is accepted: one holder writes many times).
 *
 * ```ts
 * import { fencingSql } from 'distlock'
 * const sql = fencingSql({ dialect: 'postgres', resource: 'invoice:42', token: 7n })
 * sql.claim.values // ['invoice:42', '7']
 * ```
 * @throws TypeError or RangeError for an option that is not valid (an unknown key, a table
 * name that is not an identifier, a token that is not a non-negative `bigint`).
 */
export function fencingSql(options: FencingSqlOptions): FencingSql {
  if (typeof options !== 'object' || options === null) {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, ['dialect', 'resource', 'token', 'table'])
  return statements(checkDialect(options.dialect), checkFence(options))
}

/** The checked resource, token and table of `options`. */
function checkFence(options: FenceOptions): { resource: string; token: bigint; table: string } {
  const resource = checkResource(options.resource, 'options.resource')
  const token = checkToken(options.token, 'options.token')
  const table = options.table ?? DEFAULT_TABLE
  if (typeof table !== 'string' || !TABLE_NAME.test(table)) {
    throw invalidArgValue(
      `The "options.table" argument must be a table name of letters, digits and _ (at most 63, optionally "schema.table"). Received ${typeName(table)}`,
    )
  }
  return { resource, token, table }
}

function checkDialect(dialect: unknown): SqlDialect {
  if (dialect === 'postgres' || dialect === 'mysql') return dialect
  throw invalidArgValue(`The "options.dialect" argument must be 'postgres' or 'mysql'. Received ${typeName(dialect)}`)
}

/** The statements of `dialect` for one fence. */
function statements(dialect: SqlDialect, fence: { resource: string; token: bigint; table: string }): FencingSql {
  const values = [fence.resource, fence.token.toString()]
  if (dialect === 'postgres') {
    const t = fence.table
      .split('.')
      .map((part) => `"${part}"`)
      .join('.')
    return {
      create: {
        text: `CREATE TABLE IF NOT EXISTS ${t} (resource text PRIMARY KEY, token bigint NOT NULL)`,
        values: [],
      },
      claim: {
        text: `INSERT INTO ${t} AS fence (resource, token) VALUES ($1, $2::bigint) ON CONFLICT (resource) DO UPDATE SET token = GREATEST(fence.token, EXCLUDED.token)`,
        values,
      },
      check: { text: `SELECT token::text AS current FROM ${t} WHERE resource = $1`, values: [fence.resource] },
    }
  }
  const t = fence.table
    .split('.')
    .map((part) => `\`${part}\``)
    .join('.')
  return {
    // VARBINARY: resources compare byte by byte, not by a case-insensitive collation.
    create: {
      text: `CREATE TABLE IF NOT EXISTS ${t} (resource VARBINARY(1024) NOT NULL PRIMARY KEY, token BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB`,
      values: [],
    },
    claim: {
      text: `INSERT INTO ${t} (resource, token) VALUES (?, CAST(? AS UNSIGNED)) ON DUPLICATE KEY UPDATE token = GREATEST(token, VALUES(token))`,
      values,
    },
    // FOR UPDATE: a locking read sees the latest committed row, not the transaction's snapshot.
    check: {
      text: `SELECT CAST(token AS CHAR) AS current FROM ${t} WHERE resource = ? FOR UPDATE`,
      values: [fence.resource],
    },
  }
}

/** The dialect of `db`: the option, else what the client is; a TypeError for anything else. */
function dialectOf(db: unknown, option: unknown): SqlDialect {
  const expected =
    'a pg Client or PoolClient (await pool.connect()), a mysql2/promise connection (await pool.getConnection()), or any client whose query(text, values) has their shape, with the "dialect" option'
  if (typeof db !== 'object' || db === null || typeof (db as { query?: unknown }).query !== 'function') {
    throw invalidArgType(`The "db" argument must be ${expected}. Received ${typeName(db)}`)
  }
  const has = (name: string) => typeof (db as Record<string, unknown>)[name] === 'function'
  // A pool runs each statement on whichever connection is free: BEGIN and COMMIT would not frame one transaction.
  if (has('getConnection') || (has('connect') && 'idleCount' in db)) {
    throw invalidArgType(
      `The "db" argument must be one connection, not a pool: take one with await pool.connect() (pg) or await pool.getConnection() (mysql2) and release it after. Received ${typeName(db)}`,
    )
  }
  if (has('promise') && !has('escapeIdentifier')) {
    throw invalidArgType(
      `The "db" argument must be a mysql2/promise connection: pass connection.promise(), or create it with require('mysql2/promise'). Received the callback API's ${typeName(db)}`,
    )
  }
  const known = has('escapeIdentifier') ? 'postgres' : has('execute') && has('beginTransaction') ? 'mysql' : undefined
  if (option === undefined) {
    if (known) return known
    throw invalidArgType(`The "db" argument must be ${expected}. Received ${typeName(db)}`)
  }
  const dialect = checkDialect(option)
  if (known && known !== dialect) {
    const client = known === 'postgres' ? 'a pg client' : 'a mysql2 connection'
    throw invalidArgType(`The "options.dialect" is '${dialect}', but the "db" argument is ${client} ('${known}')`)
  }
  return dialect
}

/** Runs one statement and returns its rows, checking that the reply has the dialect's shape. */
async function run(db: SqlQueryable, dialect: SqlDialect, statement: SqlStatement | string): Promise<any> {
  const { text, values } = typeof statement === 'string' ? { text: statement, values: [] } : statement
  const reply: unknown = await db.query(text, values)
  if (dialect === 'postgres') {
    const rows = (reply as { rows?: unknown } | null)?.rows
    if (!Array.isArray(rows)) throw shapeError(dialect, reply)
    return reply
  }
  if (!Array.isArray(reply)) throw shapeError(dialect, reply)
  return reply
}

function shapeError(dialect: SqlDialect, reply: unknown): TypeError {
  const shape = dialect === 'postgres' ? 'an object with a rows array (pg)' : 'an array [rows, fields] (mysql2/promise)'
  return invalidArgType(
    `The "db" argument's query() must resolve to ${shape} for the ${dialect} dialect. It resolved to ${typeName(reply)}`,
  )
}

/** The `current` column of the check's single row. */
function currentOf(dialect: SqlDialect, reply: any, table: string): bigint {
  const rows: unknown[] = dialect === 'postgres' ? reply.rows : reply[0]
  const row = rows[0] as { current?: unknown } | undefined
  return parseStored(row?.current, `the fence table ${table}`)
}

/** Whether `err` is a lost deadlock or serialization race, after which the claim may run again. */
function retryable(err: unknown): boolean {
  const { code, errno } = (err ?? {}) as { code?: unknown; errno?: unknown }
  // PostgreSQL: serialization_failure, deadlock_detected. MySQL: ER_LOCK_DEADLOCK.
  return code === '40001' || code === '40P01' || errno === 1213
}

/** The connections whose fence tables exist, so `CREATE TABLE IF NOT EXISTS` runs once per connection and table. */
const created = new WeakMap<object, Set<string>>()

async function ensureTable(db: SqlQueryable, dialect: SqlDialect, sql: FencingSql, table: string): Promise<void> {
  const tables = created.get(db) ?? new Set<string>()
  if (tables.has(table)) return
  try {
    await run(db, dialect, sql.create)
  } catch (err) {
    // Two PostgreSQL sessions creating the table at once: one fails on the catalog's unique index; the table exists.
    const code = (err as { code?: unknown } | null)?.code
    if (!(dialect === 'postgres' && (code === '23505' || code === '42P07'))) throw err
  }
  tables.add(table)
  created.set(db, tables)
}

/** ROLLBACK, which cannot make things worse: an error of its own is returned, not thrown. */
async function rollback(db: SqlQueryable, dialect: SqlDialect): Promise<unknown> {
  try {
    await run(db, dialect, 'ROLLBACK')
    return undefined
  } catch (err) {
    return err ?? new Error('ROLLBACK failed')
  }
}

/**
 * Runs `fn` in a transaction on `db` (your own `pg` or `mysql2/promise` connection) that
 * commits only if `token` is not below the largest token accepted for `resource`:
 *
 * 1. `CREATE TABLE IF NOT EXISTS` the fence table (once per connection and table);
 * 2. `BEGIN`, then claim the resource's row of the fence table: one statement raises its
 *    token to the larger of the stored one and yours and locks the row until the end of the
 *    transaction, so a later holder's transaction waits at its claim and two writers cannot
 *    both pass;
 * 3. if the stored token is larger than yours, `ROLLBACK` and reject with a
 *    {@link StaleFencingTokenError} (its `current` is the stored token): nothing was written;
 * 4. else run `fn(tx)` (`tx` is `db`; run the writes the lock protects on it) and `COMMIT`,
 *    resolving to what `fn` returned. If `fn` throws, `ROLLBACK` and reject with its error.
 *
 * The rule: a write is accepted when its token is at least the largest token seen for the
 * resource, so one holder may run many fenced transactions with its token. Call it outside a
 * transaction, on a single connection (a pool is refused: its statements may each run on a
 * different connection). Statements in `fn` that commit implicitly (MySQL's DDL) end the
 * fence's protection early.
 *
 * ```ts
 * import { withFencedTransaction, type PgQueryable } from 'distlock'
 * declare const db: PgQueryable
 * await withFencedTransaction(db, { resource: 'invoice:42', token: 7n }, async (tx) => {
 *   await tx.query('UPDATE invoices SET paid = true WHERE id = $1', [42])
 * })
 * ```
 * @throws TypeError for a `db` that is not a connection of either shape (naming what was
 * expected), an options object with a key no option has, a token that is not a `bigint`;
 * RangeError for a token out of range or a table name that is not an identifier.
 */
export async function withFencedTransaction<C extends SqlQueryable, T>(
  db: C,
  options: FencedTransactionOptions,
  fn: (tx: C) => T | Promise<T>,
): Promise<T> {
  if (typeof options !== 'object' || options === null) {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, ['resource', 'token', 'table', 'dialect'])
  if (typeof fn !== 'function') {
    throw invalidArgType(`The "fn" argument must be of type function. Received ${typeName(fn)}`)
  }
  const dialect = dialectOf(db, options.dialect)
  const fence = checkFence(options)
  const sql = statements(dialect, fence)
  await ensureTable(db, dialect, sql, fence.table)

  for (let attempt = 1; ; attempt++) {
    await run(db, dialect, 'BEGIN')
    let current: bigint
    try {
      await run(db, dialect, sql.claim)
      current = currentOf(dialect, await run(db, dialect, sql.check), fence.table)
    } catch (err) {
      await rollback(db, dialect)
      if (attempt < CLAIM_ATTEMPTS && retryable(err)) continue
      throw err
    }
    if (current === fence.token) break
    await rollback(db, dialect)
    throw new StaleFencingTokenError({ resource: fence.resource, token: fence.token, current })
  }

  let result: T
  try {
    result = await fn(db)
  } catch (err) {
    const failed = await rollback(db, dialect)
    throw failed === undefined ? err : new SuppressedError(err, failed, 'the callback threw and ROLLBACK failed')
  }
  const reply = await run(db, dialect, 'COMMIT')
  // PostgreSQL answers COMMIT of a transaction an error aborted with ROLLBACK, not an error.
  if (dialect === 'postgres' && (reply as { command?: unknown }).command === 'ROLLBACK') {
    throw new Error(
      `The fenced transaction on "${fence.resource}" was rolled back at COMMIT: a statement in it failed (an error caught inside the callback still aborts a PostgreSQL transaction)`,
    )
  }
  return result
}
