// The SQL guard, withFencedTransaction and fencingSql, on the real servers: PostgreSQL through
// `pg` and MariaDB through `mysql2/promise`, each with the same cases: the token rule, rollback,
// the fence table, wrong clients, transactions that overlap, and a holder frozen past its lease.
import mysql from 'mysql2/promise'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest'

import {
  LockError,
  StaleFencingTokenError,
  fencingSql,
  withFencedTransaction,
  type MySqlQueryable,
  type PgQueryable,
  type SqlQueryable,
} from 'distlock'

import { frozenHolder } from './fixtures/fencing-frozen'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

const PG_URL = process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const MYSQL_URL = process.env.DISTLOCK_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'
let seq = 0
const unique = (tag: string) => `fencing-${tag}-${process.pid}-${Date.now()}-${seq++}`

let services: Services
let redisUrl: string
beforeAll(async () => {
  services = await import('../lab/index.mjs')
  redisUrl = (await services.startRedis()).url
})
afterAll(() => services?.stopServices())

/** One dialect's connection, the SQL of its placeholders, and how to read rows. */
interface Dialect {
  name: 'postgres' | 'mysql'
  storage: 'pg' | 'mysql'
  url: string
  connect(): Promise<SqlQueryable & { end(): Promise<void> }>
  /** Rows of a query, whatever the client's reply shape. */
  rows(db: SqlQueryable, text: string, values?: unknown[]): Promise<Array<Record<string, unknown>>>
  /** `$1` or `?`. */
  p(n: number): string
  /** The DDL of the spec's own tables. */
  tables: string[]
}

const dialects: Dialect[] = [
  {
    name: 'postgres',
    storage: 'pg',
    url: PG_URL,
    async connect() {
      const db = new pg.Client({ connectionString: PG_URL })
      await db.connect()
      return db
    },
    async rows(db, text, values) {
      return ((await (db as PgQueryable).query(text, values)) as pg.QueryResult).rows
    },
    p: (n) => `$${n}`,
    tables: [
      'CREATE TABLE IF NOT EXISTS fencing_spec_log (resource text NOT NULL, writer text NOT NULL)',
      'CREATE TABLE IF NOT EXISTS fencing_spec_doc (resource text PRIMARY KEY, body text NOT NULL)',
    ],
  },
  {
    name: 'mysql',
    storage: 'mysql',
    url: MYSQL_URL,
    connect: () => mysql.createConnection(MYSQL_URL),
    async rows(db, text, values) {
      const [rows] = await (db as MySqlQueryable).query(text, values)
      return rows as Array<Record<string, unknown>>
    },
    p: () => '?',
    tables: [
      'CREATE TABLE IF NOT EXISTS fencing_spec_log (resource VARCHAR(255) NOT NULL, writer VARCHAR(255) NOT NULL)',
      'CREATE TABLE IF NOT EXISTS fencing_spec_doc (resource VARCHAR(255) PRIMARY KEY, body VARCHAR(255) NOT NULL)',
    ],
  },
]

/** A fenced transaction on `client` that does nothing, with `extra` options. */
const call = (client: unknown, extra = {}) =>
  withFencedTransaction(client as SqlQueryable, { resource: 'r', token: 1n, ...extra }, () => {})

describe.each(dialects)('withFencedTransaction on $name', (d) => {
  let db: SqlQueryable & { end(): Promise<void> }
  let other: SqlQueryable & { end(): Promise<void> }
  beforeAll(async () => {
    db = await d.connect()
    other = await d.connect()
    for (const ddl of d.tables) await d.rows(db, ddl)
  })
  afterAll(async () => {
    await db?.end()
    await other?.end()
  })

  /** The writers logged for `resource`, in insertion order. */
  const log = async (resource: string) =>
    (await d.rows(db, `SELECT writer FROM fencing_spec_log WHERE resource = ${d.p(1)}`, [resource])).map(
      (r) => r.writer,
    )
  /** A fenced write that logs `writer` for `resource`. */
  const write = (conn: SqlQueryable, resource: string, token: bigint, writer: string, table?: string) =>
    withFencedTransaction(conn, { resource, token, ...(table ? { table } : {}) }, async (tx) => {
      await d.rows(tx, `INSERT INTO fencing_spec_log (resource, writer) VALUES (${d.p(1)}, ${d.p(2)})`, [
        resource,
        writer,
      ])
      return writer
    })

  it('accepts a larger or an equal token, and rejects a smaller one with nothing written', async () => {
    const resource = unique('rule')
    expect(await write(db, resource, 5n, 'first')).toBe('first')
    expect(await write(db, resource, 5n, 'same holder again')).toBe('same holder again')
    expect(await write(db, resource, 9n, 'newer')).toBe('newer')
    let called = false
    const stale = await withFencedTransaction(db, { resource, token: 7n }, () => {
      called = true
    }).catch((err: unknown) => err)
    expect(stale).toBeInstanceOf(StaleFencingTokenError)
    expect(stale).toBeInstanceOf(LockError)
    expect(stale).toMatchObject({ code: 'ERR_STALE_FENCING_TOKEN', resource, token: 7n, current: 9n })
    expect((stale as Error).message).toBe(
      `Fencing token 7 for "${resource}" is older than 9, the largest the storage has accepted: nothing was written`,
    )
    expect(called).toBe(false)
    expect(await log(resource)).toEqual(['first', 'same holder again', 'newer'])
    // The rejected transaction left the connection usable, outside a transaction.
    expect(await write(db, resource, 9n, 'after')).toBe('after')
  })

  it('rolls back what the callback wrote when it throws, and rejects with its error', async () => {
    const resource = unique('throw')
    const boom = new Error('boom')
    await expect(
      withFencedTransaction(db, { resource, token: 3n }, async (tx) => {
        await d.rows(tx, `INSERT INTO fencing_spec_log (resource, writer) VALUES (${d.p(1)}, ${d.p(2)})`, [
          resource,
          'rolled back',
        ])
        throw boom
      }),
    ).rejects.toBe(boom)
    expect(await log(resource)).toEqual([])
    // The claim was rolled back too: a smaller token than the failed one is still accepted.
    expect(await write(db, resource, 2n, 'later')).toBe('later')
  })

  it('a later holder waits for an earlier one at its claim, and a stale one after both is rejected', async () => {
    const resource = unique('overlap')
    let inside!: () => void
    const entered = new Promise<void>((r) => (inside = r))
    let finish!: () => void
    const finished = new Promise<void>((r) => (finish = r))
    const order: string[] = []
    const first = withFencedTransaction(db, { resource, token: 10n }, async () => {
      inside()
      await finished
      order.push('first commits')
    })
    await entered
    const second = write(other, resource, 11n, 'second').then(() => order.push('second commits'))
    // The second transaction cannot pass its claim while the first holds the fence row.
    await new Promise((r) => setTimeout(r, 200))
    expect(order).toEqual([])
    finish()
    await Promise.all([first, second])
    expect(order).toEqual(['first commits', 'second commits'])
    await expect(write(db, resource, 10n, 'stale')).rejects.toMatchObject({ token: 10n, current: 11n })
  })

  it('creates the fence table on first use under the name given, and checks the name', async () => {
    const table = `fencing_spec_${d.name}_${process.pid}_${seq++}`
    expect(await write(db, unique('table'), 1n, 'custom table', table)).toBe('custom table')
    const fence = await d.rows(db, `SELECT CAST(token AS CHAR(20)) AS token FROM ${table}`)
    expect(fence.map((r) => String(r.token).trim())).toEqual(['1'])
    await d.rows(db, `DROP TABLE ${table}`)
    for (const bad of ['fence; DROP TABLE x', 'a.b.c', '1fence', '', 'x'.repeat(64), 'fen-ce']) {
      await expect(
        withFencedTransaction(db, { resource: 'r', token: 1n, table: bad }, () => {}),
        bad,
      ).rejects.toMatchObject({ name: 'RangeError', code: 'ERR_INVALID_ARG_VALUE' })
    }
  })

  it('refuses what is not one connection of either shape with a TypeError naming what it expected', async () => {
    for (const wrong of [null, {}, 'postgres://x', { query: 1 }, { query: async () => ({ rows: [] }) }]) {
      await expect(call(wrong)).rejects.toThrow(
        /^The "db" argument must be a pg Client or PoolClient .*, a mysql2\/promise connection/,
      )
    }
    const pgPool = new pg.Pool({ connectionString: PG_URL })
    const mysqlPool = mysql.createPool(MYSQL_URL)
    try {
      for (const pool of [pgPool, mysqlPool]) {
        await expect(call(pool)).rejects.toThrow(/must be one connection, not a pool/)
      }
      await expect(call(mysqlPool.pool)).rejects.toThrow(/must be one connection, not a pool/)
    } finally {
      await pgPool.end()
      await mysqlPool.end()
    }
    const wrongDialect = d.name === 'postgres' ? 'mysql' : 'postgres'
    await expect(call(db, { dialect: wrongDialect })).rejects.toThrow(
      `The "options.dialect" is '${wrongDialect}', but the "db" argument is`,
    )
    // A client of the query shape whose replies have neither shape.
    await expect(call({ query: async () => 'OK' }, { dialect: d.name })).rejects.toMatchObject({
      name: 'TypeError',
      message: expect.stringMatching(/query\(\) must resolve to .* It resolved to type string/),
    })
    await expect(call(db, { dialect: 'oracle' })).rejects.toThrow(/must be 'postgres' or 'mysql'/)
    await expect(call(db, { tokn: 1n })).rejects.toThrow(/unknown property "tokn"\. Did you mean "token"\?/)
    await expect(call(db, { token: 1 })).rejects.toThrow(/"options\.token" argument must be a bigint/)
    await expect(call(db, { token: -1n })).rejects.toThrow(RangeError)
  })

  it('takes any client of the same query shape with the dialect option', async () => {
    const resource = unique('duck')
    const duck = { query: (text: string, values?: unknown[]) => (db as PgQueryable).query(text, values) }
    const typed = duck as SqlQueryable
    await expect(withFencedTransaction(typed, { resource, token: 4n, dialect: d.name }, () => 'ok')).resolves.toBe('ok')
    await expect(withFencedTransaction(typed, { resource, token: 3n, dialect: d.name }, () => 'no')).rejects.toThrow(
      StaleFencingTokenError,
    )
  })

  it('fencingSql gives the same guard to run in your own transaction', async () => {
    const resource = unique('bare')
    const run = async (token: bigint) => {
      const sql = fencingSql({ dialect: d.name, resource, token, table: 'fencing_spec_bare' })
      await d.rows(other, sql.create.text, sql.create.values)
      await d.rows(other, 'BEGIN')
      await d.rows(other, sql.claim.text, sql.claim.values)
      const [{ current }] = (await d.rows(other, sql.check.text, sql.check.values)) as [{ current: string }]
      await d.rows(other, BigInt(current) === token ? 'COMMIT' : 'ROLLBACK')
      return current
    }
    expect(await run(8n)).toBe('8')
    expect(await run(8n)).toBe('8')
    expect(await run(6n)).toBe('8')
    expect(await run(12n)).toBe('12')
    expect(fencingSql({ dialect: d.name, resource: 'x', token: 1n }).claim.values).toEqual(['x', '1'])
  })

  it('a holder frozen past its lease is rejected when it wakes; the newer holder’s write is intact', async () => {
    const resource = unique('frozen')
    await d.rows(db, `INSERT INTO fencing_spec_doc (resource, body) VALUES (${d.p(1)}, ${d.p(2)})`, [resource, '-'])
    const run = await frozenHolder(d.storage, d.url, redisUrl, resource, async (token) => {
      await withFencedTransaction(db, { resource, token, table: 'fencing_spec_fence' }, async (tx) => {
        await d.rows(tx, `INSERT INTO fencing_spec_log (resource, writer) VALUES (${d.p(1)}, ${d.p(2)})`, [
          resource,
          'written by the newer holder',
        ])
        await d.rows(
          tx,
          d.name === 'postgres'
            ? 'UPDATE fencing_spec_doc SET body = $2 WHERE resource = $1'
            : 'UPDATE fencing_spec_doc SET body = ? WHERE resource = ?',
          d.name === 'postgres' ? [resource, 'written by the newer holder'] : ['written by the newer holder', resource],
        )
      })
    })
    expect(run.newer).toBeGreaterThan(run.stale)
    expect(run.result).toBe(`REJECTED ERR_STALE_FENCING_TOKEN ${run.stale} ${run.newer} ${resource}`)
    expect(await log(resource)).toEqual(['written by the newer holder'])
    const doc = await d.rows(db, `SELECT body FROM fencing_spec_doc WHERE resource = ${d.p(1)}`, [resource])
    expect(doc).toEqual([{ body: 'written by the newer holder' }])
  })
})

describe('withFencedTransaction types', () => {
  it('takes pg and mysql2 connections and passes the same type to the callback', () => {
    expectTypeOf<pg.Client>().toExtend<SqlQueryable>()
    expectTypeOf<pg.PoolClient>().toExtend<SqlQueryable>()
    expectTypeOf<mysql.Connection>().toExtend<SqlQueryable>()
    expectTypeOf<mysql.PoolConnection>().toExtend<SqlQueryable>()
    expectTypeOf<{ query(): void }>().not.toExtend<SqlQueryable>()
    type Tx<C extends SqlQueryable> = Parameters<Parameters<typeof withFencedTransaction<C, number>>[2]>[0]
    expectTypeOf<Tx<pg.PoolClient>>().toEqualTypeOf<pg.PoolClient>()
    expectTypeOf<Tx<mysql.Connection>>().toEqualTypeOf<mysql.Connection>()
    expectTypeOf(withFencedTransaction<pg.Client, number>).returns.toEqualTypeOf<Promise<number>>()
    expectTypeOf<StaleFencingTokenError['current']>().toEqualTypeOf<bigint>()
    expect(typeof withFencedTransaction).toBe('function')
  })
})
