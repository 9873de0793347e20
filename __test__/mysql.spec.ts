// The MySQL provider through the public API, against a real server ($DISTLOCK_TEST_MYSQL_URL,
// which `npm test` sets after starting a private MariaDB; else the local server on 3306).
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import mysql from 'mysql2/promise'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { AbortError, LockBackendError, LockLostError, MySqlLockProvider } from 'distlock'

import { Child, eventually, silentServer, tempDir } from './helpers'

const URL_MYSQL = process.env.DISTLOCK_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'
const CA = process.env.DISTLOCK_TEST_MYSQL_CA
let seq = 0
const unique = (tag: string) => `${tag}-${process.pid}-${Date.now()}-${seq++}`

let admin: mysql.Connection
const providers: MySqlLockProvider[] = []
function provider(options: Partial<ConstructorParameters<typeof MySqlLockProvider>[0]> = {}): MySqlLockProvider {
  const p = new MySqlLockProvider({ connectionString: URL_MYSQL, ...options })
  providers.push(p)
  return p
}

beforeAll(async () => {
  admin = await mysql.createConnection(URL_MYSQL).catch((err: Error) => {
    throw new Error(
      `cannot reach the test MySQL server at ${URL_MYSQL} (${err.message}); run npm test or set DISTLOCK_TEST_MYSQL_URL`,
    )
  })
})

afterAll(async () => {
  await Promise.all(providers.map((p) => p.close()))
  await admin.end()
})

/** The connection id holding the server lock `serverName`, or null. */
async function holderOf(serverName: string): Promise<number | null> {
  const [rows] = await admin.query('SELECT IS_USED_LOCK(?) AS id', [serverName])
  return (rows as { id: number | null }[])[0]!.id
}

/** A provider that cannot be made with `options`, as a function for `expect(…).toThrow`. */
const bad = (options: unknown) => () => new MySqlLockProvider(options as never)

/** TLS handshakes the server has accepted so far. */
async function accepts(): Promise<number> {
  const [rows] = await admin.query("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")
  return Number((rows as { Value: string }[])[0]!.Value)
}

describe('MySqlLockProvider', () => {
  it('excludes a raw GET_LOCK client on the name .NET DistributedLock would use, both ways', async () => {
    const p = provider()
    // Lowercase names of up to 64 characters are the server's names as they are; others are
    // hashed by .NET's rule (vector from DistributedLock's own tests: "ABC").
    const plain = unique('plain')
    const [got] = await admin.query('SELECT GET_LOCK(?, 0) AS g', [plain])
    expect((got as { g: number }[])[0]!.g).toBe(1)
    expect(await p.createLock(plain).tryAcquire()).toBeNull()
    await admin.query('DO RELEASE_LOCK(?)', [plain])
    const h = await p.createLock('ABC').acquire({ timeoutMs: 5_000 })
    expect(await holderOf('abczj4qr6tvn4a3kmgq4bukhowqyfrlxsb3')).not.toBeNull()
    const [busy] = await admin.query('SELECT GET_LOCK(?, 0) AS g', ['abczj4qr6tvn4a3kmgq4bukhowqyfrlxsb3'])
    expect((busy as { g: number }[])[0]!.g).toBe(0)
    await h.release()
    expect(await holderOf('abczj4qr6tvn4a3kmgq4bukhowqyfrlxsb3')).toBeNull()
  })

  it('many held locks share a few sessions', async () => {
    const p = provider({ maxConnections: 4 })
    const tag = unique('share')
    const handles = await Promise.all(Array.from({ length: 200 }, (_, i) => p.createLock(`${tag}-${i}`).acquire()))
    expect(p.connections).toBeGreaterThanOrEqual(1)
    expect(p.connections).toBeLessThanOrEqual(4)
    expect(p.heldCount).toBe(200)
    await Promise.all(handles.map((h) => h.release()))
    expect(p.heldCount).toBe(0)
  })

  it('aborts handle.signal with LockLostError within 3 s of KILL CONNECTION, only for that session', async () => {
    const a = provider()
    const b = provider()
    const name = unique('killed')
    const other = unique('other')
    const h = await a.createLock(name).acquire()
    const kept = await b.createLock(other).acquire()
    const id = await holderOf(name)
    expect(id).not.toBeNull()
    const killedAt = Date.now()
    await admin.query(`KILL CONNECTION ${id}`)
    await eventually(() => h.signal.aborted, 3_000)
    expect(Date.now() - killedAt).toBeLessThan(3_000)
    expect(h.signal.reason).toBeInstanceOf(LockLostError)
    expect((h.signal.reason as Error).message).toContain(name)
    expect(h.isHeld).toBe(false)
    expect(kept.isHeld).toBe(true)
    // The server freed the name; this process's queue let it go too.
    const again = await a.createLock(name).acquire({ timeoutMs: 2_000 })
    expect(again.fencingToken > h.fencingToken).toBe(true)
    await h.release() // a lost lock releases without error
    await again.release()
    await kept.release()
  })

  it('an AbortSignal ends the wait on the server and leaves nothing held', async () => {
    const a = provider()
    const b = provider()
    const name = unique('abort')
    const h = await a.createLock(name).acquire()
    const ac = new AbortController()
    const waiting = b
      .createLock(name)
      .acquire({ signal: ac.signal })
      .catch((e: unknown) => e)
    await new Promise((r) => setTimeout(r, 200)) // the wait reaches the server
    ac.abort()
    expect(await waiting).toBeInstanceOf(AbortError)
    await h.release()
    // A GET_LOCK left waiting on the server would take the lock now.
    await new Promise((r) => setTimeout(r, 150))
    expect(await holderOf(name)).toBeNull()
    const c = await provider().createLock(name).tryAcquire()
    expect(c).not.toBeNull()
    await c!.release()
  })

  it('createReaderWriterLock throws a RangeError that says why', () => {
    expect(() => provider().createReaderWriterLock('doc')).toThrow(RangeError)
    expect(() => provider().createReaderWriterLock('doc')).toThrow(/named locks .* are exclusive/)
  })

  it('a wrong password and a refused connection are backend errors, never busy', async () => {
    const wrong = URL_MYSQL.replace('://root', '://nobody_here:wrong')
    const err = await provider({ connectionString: wrong })
      .createLock('x')
      .acquire({ timeoutMs: 2_000 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toMatch(/denied/)
    const refused = await provider({ connectionString: 'mysql://root@127.0.0.1:1/test' })
      .createLock('x')
      .tryAcquire()
      .catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(LockBackendError)
  })

  it('speaks TLS, verifying the server against the given CA', async () => {
    if (!CA) throw new Error('DISTLOCK_TEST_MYSQL_CA is not set: npm test sets it with the private server it starts')
    // The private server's certificate names "localhost", so the URL does too (the driver
    // always checks the host name: its `verify_identity=false` has no effect with rustls).
    const tlsUrl = `${URL_MYSQL.replace('@127.0.0.1:', '@localhost:')}${URL_MYSQL.includes('?') ? '&' : '?'}require_ssl=true&prefer_socket=false`
    const before = await accepts()
    const p = provider({ connectionString: tlsUrl, tls: { ca: readFileSync(CA) } })
    const h = await p.createLock(unique('tls')).acquire({ timeoutMs: 5_000 })
    expect(await accepts()).toBeGreaterThan(before)
    await h.release()
    // A CA that did not sign the server's certificate is refused.
    const dir = tempDir('mysql-other-ca')
    const made = spawnSync('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=someone else',
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'ca.pem'),
    ])
    expect(made.status, made.stderr?.toString()).toBe(0)
    const strangers = provider({ connectionString: tlsUrl, tls: { ca: readFileSync(join(dir, 'ca.pem')) } })
    const err = await strangers
      .createLock(unique('tls'))
      .tryAcquire()
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
  })
})

describe('distlock run --mysql', () => {
  it('runs the command under a MySQL named lock, then frees it', async () => {
    const name = unique('cli')
    const cli = join(__dirname, '..', 'bin', 'distlock.js')
    const script = 'console.log(process.env.DISTLOCK_FENCING_TOKEN)'
    const run = spawnSync(
      process.execPath,
      [cli, 'run', name, '--mysql', URL_MYSQL, '--', process.execPath, '-e', script],
      {
        encoding: 'utf8',
        timeout: 20_000,
      },
    )
    expect(run.status, run.stderr).toBe(0)
    expect(BigInt(run.stdout.trim()) > 0n).toBe(true)
    const h = await provider().createLock(name).tryAcquire()
    expect(h).not.toBeNull()
    expect(h!.fencingToken > BigInt(run.stdout.trim())).toBe(true)
    await h!.release()
  })
})

describe('MySqlLockProvider bad input', () => {
  it.each([
    ['options not an object', 'nope', TypeError, 'ERR_INVALID_ARG_TYPE', 'options'],
    ['connectionString missing', {}, TypeError, 'ERR_INVALID_ARG_TYPE', 'connectionString'],
    ['connectionString empty', { connectionString: '' }, RangeError, 'ERR_INVALID_ARG_VALUE', 'connectionString'],
    [
      'another scheme',
      { connectionString: 'postgres://x' },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'connectionString must be a URL starting with mysql://',
    ],
    [
      'malformed URL',
      { connectionString: 'mysql://root@h:notaport/db' },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'connectionString',
    ],
    [
      'maxConnections 0',
      { connectionString: URL_MYSQL, maxConnections: 0 },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'maxConnections',
    ],
    [
      'maxConnections a string',
      { connectionString: URL_MYSQL, maxConnections: '3' },
      TypeError,
      'ERR_INVALID_ARG_TYPE',
      'maxConnections',
    ],
    [
      'keepaliveMs negative',
      { connectionString: URL_MYSQL, keepaliveMs: -1 },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'keepaliveMs',
    ],
    [
      'fencingTable with SQL in it',
      { connectionString: URL_MYSQL, fencingTable: 'a;drop' },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'fencingTable',
    ],
    [
      'fencing unknown',
      { connectionString: URL_MYSQL, fencing: 'clock' },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'fencing',
    ],
    [
      'scope (no transaction scope on MySQL)',
      { connectionString: URL_MYSQL, scope: 'transaction' },
      TypeError,
      'ERR_INVALID_ARG_VALUE',
      'scope',
    ],
    [
      'a client certificate without its key',
      { connectionString: URL_MYSQL, tls: { cert: 'x' } },
      RangeError,
      'ERR_INVALID_ARG_VALUE',
      'cert and key',
    ],
  ])('%s', (_label, options, cls, code, mention) => {
    let caught: unknown
    try {
      bad(options)()
    } catch (e) {
      caught = e
    }
    expect(caught).toBeInstanceOf(cls)
    expect((caught as { code: string }).code).toBe(code)
    expect((caught as Error).message).toContain(mention)
  })
})

describe('MySqlLockProvider across processes', () => {
  it('4 processes incrementing a counter under the lock lose no update', async () => {
    const dir = tempDir('mysql-counter')
    const name = unique('counter')
    const children = Array.from(
      { length: 4 },
      () => new Child('child.cjs', ['mysql', 'counter', URL_MYSQL, name, dir, '50']),
    )
    for (const c of children) expect((await c.exited).code, c.lines.join('\n')).toBe(0)
    expect(Number(readFileSync(join(dir, 'counter.txt'), 'utf8'))).toBe(200)
  })

  it('the server frees the lock of a holder killed with kill -9', async () => {
    const name = unique('kill9')
    const child = new Child('child.cjs', ['mysql', 'hold', URL_MYSQL, name])
    await child.line('HOLDING')
    expect(await provider().createLock(name).tryAcquire()).toBeNull()
    child.kill('SIGKILL')
    await child.exited
    const h = await provider().createLock(name).acquire({ timeoutMs: 5_000 })
    await h.release()
  })
})

describe('MySqlLockProvider against a server that accepts and never answers', () => {
  it('an acquire settles by its timeoutMs, not by connectTimeoutMs', async () => {
    await using silent = await silentServer()
    const p = provider({ connectionString: `mysql://root@127.0.0.1:${silent.port}/test`, connectTimeoutMs: 5_000 })
    const started = performance.now()
    const err = await p
      .createLock('silent')
      .acquire({ timeoutMs: 500 })
      .then(
        () => null,
        (e: Error) => e,
      )
    const took = performance.now() - started
    expect(err).toBeInstanceOf(LockBackendError)
    expect(took).toBeGreaterThanOrEqual(490)
    expect(took).toBeLessThan(1_500)
  })
})
