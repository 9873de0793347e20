// The PostgreSQL provider through the public API, against a real server ($DISTLOCK_TEST_PG_URL,
// which `npm test` sets after finding or starting one; else the local server on 5432).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { Client } from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import {
  AbortError,
  LockBackendError,
  LockLostError,
  LockTimeoutError,
  PostgresLockProvider,
  type LockHandle,
} from 'distlock'

import { Child, eventually, tempDir } from './helpers'

const PG_URL = process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
let seq = 0
const unique = (tag: string) => `${tag}-${process.pid}-${Date.now()}-${seq++}`
const withApp = (app: string) => `${PG_URL}${PG_URL.includes('?') ? '&' : '?'}application_name=${app}`

let admin: Client
const providers: PostgresLockProvider[] = []
function provider(app = unique('dlvt')): PostgresLockProvider {
  const p = new PostgresLockProvider({ connectionString: withApp(app) })
  providers.push(p)
  return p
}

beforeAll(async () => {
  admin = new Client({ connectionString: PG_URL })
  await admin.connect().catch((err: Error) => {
    throw new Error(
      `cannot reach the test PostgreSQL at ${PG_URL} (${err.message}); run npm test or set DISTLOCK_TEST_PG_URL`,
    )
  })
})

afterAll(async () => {
  await Promise.all(providers.map((p) => p.close()))
  await admin.end()
})

async function waitingOnLock(app: string): Promise<number> {
  const r = await admin.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
    [app],
  )
  return r.rows[0].n
}

describe('PostgresLockProvider', () => {
  it('many held locks share a few connections (the connections getter)', async () => {
    const p = provider()
    expect(p.connections).toBe(0)
    const tag = unique('share')
    const handles = await Promise.all(Array.from({ length: 200 }, (_, i) => p.createLock(`${tag}-${i}`).acquire()))
    expect(p.connections).toBeGreaterThanOrEqual(1)
    expect(p.connections).toBeLessThanOrEqual(10)
    await Promise.all(handles.map((h) => h.release()))
  })

  it('with the event-loop driver every session of one TCP host is read on the JS thread', async () => {
    const p = provider()
    const handles = await Promise.all(Array.from({ length: 20 }, (_, i) => p.createLock(unique(`loop-${i}`)).acquire()))
    expect(p.connections).toBeGreaterThanOrEqual(1)
    expect(p.eventLoopConnections).toBe(p.driver === 'event-loop' ? p.connections : 0)
    await Promise.all(handles.map((h) => h.release()))
  })

  it('excludes, times out, and hands out increasing fencing tokens', async () => {
    const a = provider()
    const b = provider()
    const name = unique('mutex')
    const h1 = await a.createLock(name).acquire()
    expect(await b.createLock(name).tryAcquire()).toBeNull()
    const started = Date.now()
    const err = await b
      .createLock(name)
      .acquire({ timeoutMs: 200 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockTimeoutError)
    expect((err as LockTimeoutError).message).toContain(name)
    expect(Date.now() - started).toBeGreaterThanOrEqual(190)
    await h1.release()
    const h2 = await b.createLock(name).acquire({ timeoutMs: 1000 })
    expect(typeof h2.fencingToken).toBe('bigint')
    expect(h2.fencingToken > h1.fencingToken).toBe(true)
    await h2.release()
    expect(await a.createLock(name).withLock(async (h) => h.isReleased)).toBe(false)
  })

  it('readers share, a writer excludes them, and a waiting writer is not starved', async () => {
    const a = provider()
    const b = provider()
    const name = unique('rw')
    const r1 = await a.createReaderWriterLock(name).acquireRead()
    const r2 = await b.createReaderWriterLock(name).acquireRead({ timeoutMs: 0 })
    expect(await b.createReaderWriterLock(name).tryAcquireWrite()).toBeNull()
    // The writer comes from a third session (within one process a writer queues in memory
    // behind that process's own readers, before it reaches the server).
    const writer = provider().createReaderWriterLock(name).acquireWrite({ timeoutMs: 10_000 })
    await new Promise((r) => setTimeout(r, 150))
    // A stream of new readers from another session must queue behind the writer.
    const c = provider()
    expect(await c.createReaderWriterLock(name).tryAcquireRead()).toBeNull()
    await r1.release()
    await r2.release()
    const w = await writer
    expect(await c.createReaderWriterLock(name).tryAcquireRead()).toBeNull()
    await w.release()
    const r3 = await c.createReaderWriterLock(name).tryAcquireRead()
    expect(r3).not.toBeNull()
    await r3!.release()
  })

  it('a semaphore admits maxCount holders across sessions', async () => {
    const a = provider()
    const b = provider()
    const name = unique('sem')
    const held: LockHandle[] = []
    for (const p of [a, a, b]) held.push((await p.createSemaphore(name, 3).tryAcquire())!)
    expect(held.every((h) => h !== null)).toBe(true)
    expect(await a.createSemaphore(name, 3).tryAcquire()).toBeNull()
    expect(await b.createSemaphore(name, 3).tryAcquire()).toBeNull()
    const waiting = b.createSemaphore(name, 3).acquire({ timeoutMs: 5000 })
    await held.shift()!.release()
    held.push(await waiting)
    await Promise.all(held.map((h) => h.release()))
  })

  it('an AbortSignal cancels the wait on the server and leaves nothing held', async () => {
    const a = provider()
    const app = unique('dlvt-cancel')
    const b = provider(app)
    const name = unique('abort')
    const h = await a.createLock(name).acquire()
    const ac = new AbortController()
    const pending = b
      .createLock(name)
      .acquire({ signal: ac.signal })
      .catch((e: unknown) => e)
    await eventually(async () => (await waitingOnLock(app)) === 1)
    ac.abort()
    expect(await pending).toBeInstanceOf(AbortError)
    expect(await waitingOnLock(app)).toBe(0)
    await h.release()
    const again = await provider().createLock(name).tryAcquire()
    expect(again).not.toBeNull()
    await again!.release()
  })

  it('aborts handle.signal with LockLostError within 2 s of pg_terminate_backend, only for that session', async () => {
    const app = unique('dlvt-lost')
    const a = provider(app)
    const b = provider()
    const h = await a.createLock(unique('lost')).acquire()
    const other = await b.createLock(unique('other')).acquire()
    const lost = new Promise<unknown>((resolve) => h.signal.addEventListener('abort', () => resolve(h.signal.reason)))
    const started = Date.now()
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app])
    const reason = await Promise.race([lost, new Promise((r) => setTimeout(() => r('timeout'), 2000))])
    expect(reason).toBeInstanceOf(LockLostError)
    expect(Date.now() - started).toBeLessThan(2000)
    expect(other.signal.aborted).toBe(false)
    await h.release() // does not throw for a lost lock
    // New acquires reconnect.
    const fresh = await a.createLock(unique('fresh')).acquire({ timeoutMs: 5000 })
    await fresh.release()
    await other.release()
  })

  it('transaction scope holds the lock in an open transaction', async () => {
    const app = unique('dlvt-xact')
    const a = new PostgresLockProvider({ connectionString: withApp(app), scope: 'transaction' })
    providers.push(a)
    const name = unique('xact')
    const h = await a.createLock(name).acquire()
    const r = await admin.query('SELECT state FROM pg_stat_activity WHERE application_name = $1', [app])
    expect(r.rows.map((x) => x.state)).toEqual(['idle in transaction'])
    expect(await provider().createLock(name).tryAcquire()).toBeNull()
    await h.release()
    const again = await provider().createLock(name).tryAcquire()
    expect(again).not.toBeNull()
    await again!.release()
  })

  it('close() releases held locks and aborts their signals', async () => {
    const a = new PostgresLockProvider({ connectionString: PG_URL })
    const name = unique('close')
    const h = await a.createLock(name).acquire()
    await a.close()
    await eventually(() => h.signal.aborted)
    expect(h.signal.reason).toBeInstanceOf(LockLostError)
    const again = await provider().createLock(name).acquire({ timeoutMs: 2000 })
    await again.release()
  })
})

const make = (options: unknown) => () => new PostgresLockProvider(options as never)

describe('PostgresLockProvider bad input', () => {
  it.each([
    ['options not an object', 'nope', TypeError, 'ERR_INVALID_ARG_TYPE', 'options'],
    ['connectionString missing', {}, TypeError, 'ERR_INVALID_ARG_TYPE', 'connectionString'],
    ['connectionString empty', { connectionString: '' }, RangeError, 'ERR_INVALID_ARG_VALUE', 'connectionString'],
    [
      'malformed URL',
      { connectionString: 'postgres://u@h:notaport/db' },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'connectionString',
    ],
    ['no user', { connectionString: 'postgres://h/db' }, RangeError, 'ERR_INVALID_ARG_VALUE', 'no user'],
    [
      'unreadable sslrootcert',
      { connectionString: `${PG_URL}?sslrootcert=/nonexistent.pem` },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'sslrootcert',
    ],
    [
      'maxConnections 0',
      { connectionString: PG_URL, maxConnections: 0 },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'maxConnections',
    ],
    [
      'maxConnections a string',
      { connectionString: PG_URL, maxConnections: '4' },
      TypeError,
      'ERR_INVALID_ARG_TYPE',
      'maxConnections',
    ],
    [
      'keepaliveMs negative',
      { connectionString: PG_URL, keepaliveMs: -1 },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'keepaliveMs',
    ],
    ['scope unknown', { connectionString: PG_URL, scope: 'pgbouncer' }, RangeError, 'ERR_INVALID_ARG_VALUE', 'scope'],
    [
      'fencingSequence with SQL in it',
      { connectionString: PG_URL, fencingSequence: 'x; drop table y' },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'fencingSequence',
    ],
  ])('%s', (_label, options, cls, code, mention) => {
    let caught: unknown
    try {
      make(options)()
    } catch (e) {
      caught = e
    }
    expect(caught).toBeInstanceOf(cls)
    expect((caught as { code: string }).code).toBe(code)
    expect((caught as Error).message).toContain(mention)
  })

  it('maxCount out of range is a RangeError', () => {
    expect(() => provider().createSemaphore('s', 0)).toThrow(RangeError)
  })

  it('an unknown role is a LockBackendError that names it, never busy', async () => {
    const url = PG_URL.replace('postgres://postgres@', 'postgres://no_such_role_dl@')
    const p = new PostgresLockProvider({ connectionString: url })
    providers.push(p)
    const err = await p
      .createLock('x')
      .tryAcquire()
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toContain('no_such_role_dl')
  })

  it('a database that is down at acquire time is a LockBackendError naming the server', async () => {
    const p = new PostgresLockProvider({ connectionString: 'postgres://postgres@127.0.0.1:9/postgres' })
    providers.push(p)
    const err = await p
      .createLock('x')
      .acquire({ timeoutMs: 1000 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toContain('127.0.0.1:9')
    // Ridden out until the deadline, as on every backend.
    expect((err as Error).message).toMatch(/timeout of .* ran out after \d+ ms while .* could not be reached/)
  })

  it('an unresolvable host is ridden out (a name can appear later), then a LockBackendError at the deadline', async () => {
    const p = new PostgresLockProvider({ connectionString: 'postgres://postgres@no-such-host.invalid/postgres' })
    providers.push(p)
    const start = performance.now()
    const err = await p
      .createLock('x')
      .acquire({ timeoutMs: 600 })
      .catch((e: unknown) => e)
    expect(performance.now() - start).toBeGreaterThanOrEqual(550)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toContain('no-such-host.invalid')
    expect((err as Error).message).toMatch(/ran out after \d+ ms/)
  })
})

describe('PostgresLockProvider across processes', () => {
  it('4 processes incrementing a counter under the lock lose no update', async () => {
    const dir = tempDir('pg-counter')
    const name = unique('counter')
    const children = Array.from(
      { length: 4 },
      () => new Child('child.cjs', ['postgres', 'counter', PG_URL, name, dir, '50']),
    )
    for (const c of children) expect((await c.exited).code, c.lines.join('\n')).toBe(0)
    expect(Number(readFileSync(join(dir, 'counter.txt'), 'utf8'))).toBe(200)
  })

  it('a holder whose JS thread blocks for 8 keepalive periods keeps its lock (the probe counts only time the loop ran)', async () => {
    const name = unique('blocked')
    const holder = new Child('child.cjs', ['postgres', 'block', PG_URL, name, '', '1600'])
    const [, , onLoop] = (await holder.line('HOLDING')).split(' ')
    // With the event-loop driver the session's socket is read on the blocked thread itself.
    expect(Number(onLoop)).toBe(process.env.DISTLOCK_DRIVER === 'tokio' ? 0 : 1)
    const p = provider()
    expect(await p.createLock(name).tryAcquire()).toBeNull()
    expect(await holder.line('AFTER')).toBe('AFTER aborted=false held=true')
    expect((await holder.exit()).code).toBe(0)
    const h = await p.createLock(name).acquire({ timeoutMs: 5000 })
    await h.release()
  })

  it('the server frees the lock of a holder killed with kill -9', async () => {
    const name = unique('kill9')
    const holder = new Child('child.cjs', ['postgres', 'hold', PG_URL, name])
    await holder.line('HOLDING')
    const p = provider()
    expect(await p.createLock(name).tryAcquire()).toBeNull()
    holder.proc.kill('SIGKILL')
    await holder.exited
    const h = await p.createLock(name).acquire({ timeoutMs: 10_000 })
    await h.release()
  })
})
