// PostgreSQL against clients nobody here wrote: psql sessions taking advisory locks on the keys
// .NET DistributedLock (and so distlock) derives from a name, both ways, and a raw node-postgres
// program contending with a distlock process.
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { afterAll, describe, expect, it } from 'vitest'

import { LockTimeoutError, PostgresLockProvider } from 'distlock'

import { Child, tempDir } from './helpers'

const PG_URL = process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
let seq = 0
const unique = (tag: string) => `${tag}-${process.pid}-${Date.now()}-${seq++}`
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

if (spawnSync('psql', ['--version']).status !== 0) {
  throw new Error('psql was not found: the PostgreSQL interop tests run it (apt-get install postgresql-client)')
}

/** An interactive psql session: statements in on stdin, each answer read up to an \echo marker. */
class Psql {
  readonly proc: ChildProcessWithoutNullStreams
  #out = ''
  #n = 0

  constructor() {
    this.proc = spawn('psql', [PG_URL, '-qAtX', '-v', 'ON_ERROR_STOP=1'], { stdio: 'pipe' })
    this.proc.stdout.setEncoding('utf8')
    this.proc.stdout.on('data', (d: string) => (this.#out += d))
    this.proc.stderr.on('data', (d: Buffer) => (this.#out += `[stderr] ${d}`))
  }

  /** Sends `sql`; the marker it returns shows up in the output once psql has its answer. */
  send(sql: string): string {
    const marker = `--done-${this.#n++}--`
    this.proc.stdin.write(`${sql};\n\\echo ${marker}\n`)
    return marker
  }

  /** Whether `marker` appeared within `ms`; the answer before it. */
  async answer(marker: string, ms = 10_000): Promise<string | null> {
    const deadline = Date.now() + ms
    for (;;) {
      const at = this.#out.indexOf(`${marker}\n`)
      if (at !== -1) {
        const text = this.#out.slice(0, at).trim()
        this.#out = this.#out.slice(at + marker.length + 1)
        return text
      }
      if (Date.now() >= deadline || this.proc.exitCode !== null) return null
      await sleep(5)
    }
  }

  async query(sql: string): Promise<string> {
    const text = await this.answer(this.send(sql))
    if (text === null) throw new Error(`psql gave no answer to ${sql}: ${this.#out}`)
    return text
  }

  close(): void {
    this.proc.stdin.end()
    this.proc.kill()
  }
}

const sessions: Psql[] = []
const providers: PostgresLockProvider[] = []
function psql(): Psql {
  const s = new Psql()
  sessions.push(s)
  return s
}
function provider(): PostgresLockProvider {
  const p = new PostgresLockProvider({ connectionString: PG_URL })
  providers.push(p)
  return p
}

afterAll(async () => {
  for (const s of sessions) s.close()
  await Promise.all(providers.map((p) => p.close()))
})

// Key vectors from .NET DistributedLock's PostgresAdvisoryLockKey: a name that is not ASCII-packable
// is the first 8 bytes of SHA-1 as a signed bigint; "a" packs into the int4 pair (-1023410177, -1).
const MY_LOCK_NAME = '4062898426641073528'

describe('PostgreSQL interop with psql and raw advisory locks', () => {
  it("a psql session holding pg_advisory_lock on the name's key shuts distlock out, and the other way round", async () => {
    const lock = provider().createLock('MyLockName')
    const theirs = psql()
    expect(await theirs.query(`SELECT pg_try_advisory_lock(${MY_LOCK_NAME})`)).toBe('t')
    expect(await lock.tryAcquire()).toBeNull()
    await expect(lock.acquire({ timeoutMs: 200 })).rejects.toBeInstanceOf(LockTimeoutError)
    const waiting = lock.acquire({ timeoutMs: 10_000 })
    await sleep(100)
    expect(await theirs.query(`SELECT pg_advisory_unlock(${MY_LOCK_NAME})`)).toBe('t')
    const ours = await waiting

    // distlock holds: psql's try fails, and its blocking lock waits until distlock releases.
    expect(await theirs.query(`SELECT pg_try_advisory_lock(${MY_LOCK_NAME})`)).toBe('f')
    const marker = theirs.send(`SELECT pg_advisory_lock(${MY_LOCK_NAME})`)
    expect(await theirs.answer(marker, 300)).toBeNull()
    await ours.release()
    expect(await theirs.answer(marker)).toBe('')
    expect(await lock.tryAcquire()).toBeNull()
    expect(await theirs.query(`SELECT pg_advisory_unlock(${MY_LOCK_NAME})`)).toBe('t')
    const again = await lock.tryAcquire()
    expect(again).not.toBeNull()
    await again!.release()
  })

  it('a short ASCII name is the int4 pair .NET packs it into', async () => {
    const lock = provider().createLock('a')
    const theirs = psql()
    expect(await theirs.query('SELECT pg_try_advisory_lock(-1023410177, -1)')).toBe('t')
    expect(await lock.tryAcquire()).toBeNull()
    expect(await theirs.query('SELECT pg_advisory_unlock(-1023410177, -1)')).toBe('t')
    const ours = await lock.tryAcquire()
    expect(ours).not.toBeNull()
    expect(await theirs.query('SELECT pg_try_advisory_lock(-1023410177, -1)')).toBe('f')
    await ours!.release()
  })

  it("reader-writer locks are the name's key taken shared or exclusive", async () => {
    const rw = provider().createReaderWriterLock('MyLockName')
    const theirs = psql()
    // A psql shared holder lets distlock readers in and keeps its writers out.
    expect(await theirs.query(`SELECT pg_try_advisory_lock_shared(${MY_LOCK_NAME})`)).toBe('t')
    const reader = await rw.tryAcquireRead()
    expect(reader).not.toBeNull()
    expect(await rw.tryAcquireWrite()).toBeNull()
    expect(await theirs.query(`SELECT pg_advisory_unlock_shared(${MY_LOCK_NAME})`)).toBe('t')
    // A distlock reader keeps psql's exclusive lock out and lets its shared lock in.
    expect(await theirs.query(`SELECT pg_try_advisory_lock(${MY_LOCK_NAME})`)).toBe('f')
    expect(await theirs.query(`SELECT pg_try_advisory_lock_shared(${MY_LOCK_NAME})`)).toBe('t')
    expect(await theirs.query(`SELECT pg_advisory_unlock_shared(${MY_LOCK_NAME})`)).toBe('t')
    await reader!.release()
    expect(await theirs.query(`SELECT pg_try_advisory_lock(${MY_LOCK_NAME})`)).toBe('t')
    expect(await rw.tryAcquireRead()).toBeNull()
    expect(await theirs.query(`SELECT pg_advisory_unlock(${MY_LOCK_NAME})`)).toBe('t')
  })

  it('a distlock process and a raw node-postgres process contending for 6 s never overlap', async () => {
    const dir = tempDir('pg-interop')
    const name = unique('contend')
    // The raw client derives the key as .NET does for a long name: SHA-1's first 8 bytes, little-endian.
    const key = createHash('sha1').update(name, 'utf8').digest().readBigInt64LE(0).toString()
    const ms = '6000'
    const ours = new Child('contend.cjs', ['distlock-pg', dir, ms, JSON.stringify({ url: PG_URL, name })])
    const theirs = new Child('contend.cjs', ['raw-pg', dir, ms, JSON.stringify({ url: PG_URL, key: [key] })])
    await Promise.all([ours.line('READY'), theirs.line('READY')])
    writeFileSync(join(dir, 'go'), '')
    const [a, b] = await Promise.all([ours.line('DONE', 30_000), theirs.line('DONE', 30_000)])
    const log = readFileSync(join(dir, 'log.txt'), 'utf8')
    expect(log).not.toMatch(/^overlap /m)
    expect(log).not.toMatch(/^error /m)
    const [, oursGrants] = a.split(' ').map(Number)
    const [, theirGrants] = b.split(' ').map(Number)
    expect(oursGrants).toBeGreaterThan(20)
    expect(theirGrants).toBeGreaterThan(20)
    await Promise.all([ours.exit(), theirs.exit()])
  }, 60_000)
})
