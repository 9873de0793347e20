// The keyed lock classes and the inspection API (isLocked, getInfo, extend, per-acquire leaseMs)
// on every backend: memory, file, PostgreSQL, MySQL and Redis (a redis-server this spec starts);
// etcd's keyed class is in etcd.spec.ts (its extend is bounded by the lease's TTL).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import {
  FileDistributedLock,
  LockGuard,
  LockLostError,
  LockTimeoutError,
  MemoryDistributedLock,
  MemoryLockProvider,
  MySqlDistributedLock,
  PostgresDistributedLock,
  RedisDistributedLock,
  type LockConfig,
} from 'distlock'

import { tempDir } from './helpers'
import type { RedisServer } from '../lab/index.mjs' with { 'resolution-mode': 'import' }

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
const PG_URL = process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const MYSQL_URL = process.env.DISTLOCK_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'
let services: Services
let redis: RedisServer
const dir = tempDir('keyed')
// Memory locks live in their provider: the keyed locks of this spec share one.
const memory = new MemoryLockProvider()
let seq = 0
const key = (tag: string) => `keyed-${tag}-${process.pid}-${Date.now()}-${seq++}`

type Keyed =
  MemoryDistributedLock | FileDistributedLock | PostgresDistributedLock | MySqlDistributedLock | RedisDistributedLock
const BACKENDS: Array<[string, (config: LockConfig) => Keyed, { lease: boolean; tokenInfo: boolean }]> = [
  ['memory', (c) => new MemoryDistributedLock({ ...c, provider: memory }), { lease: false, tokenInfo: true }],
  ['file', (c) => new FileDistributedLock({ directory: dir, ...c }), { lease: false, tokenInfo: true }],
  [
    'postgres',
    (c) => new PostgresDistributedLock({ connectionString: PG_URL, ...c }),
    { lease: false, tokenInfo: false },
  ],
  ['mysql', (c) => new MySqlDistributedLock({ connectionString: MYSQL_URL, ...c }), { lease: false, tokenInfo: true }],
  ['redis', (c) => new RedisDistributedLock({ urls: [redis.url], ...c }), { lease: true, tokenInfo: true }],
]
const open: Keyed[] = []
function make(factory: (config: LockConfig) => Keyed, config: LockConfig = {}): Keyed {
  const k = factory(config)
  open.push(k)
  return k
}

beforeAll(async () => {
  services = await import('../lab/index.mjs')
  redis = await services.startRedis()
})

afterAll(async () => {
  await Promise.all(open.map((k) => k.close()))
  services.stopServices()
})

describe.each(BACKENDS)('%s keyed lock', (_name, factory, traits) => {
  it('acquire, tryAcquire, isLocked, getInfo and release', async () => {
    const a = make(factory)
    const b = make(factory, { retryIntervalMs: 50, maxRetries: 2 })
    const k = key('basic')
    expect(await a.isLocked(k)).toBe(false)
    const guard = await a.acquire(k)
    expect(guard).toBeInstanceOf(LockGuard)
    expect(guard.key).toBe(k)
    expect(guard.token).toBe(guard.fencingToken.toString())
    expect(guard.signal.aborted).toBe(false)
    expect(await a.isLocked(k)).toBe(true)
    expect(await b.isLocked(k)).toBe(true)
    const info = await b.getInfo(k)
    expect(info.held).toBe(true)
    if (traits.tokenInfo) expect(info.fencingToken).toBe(guard.fencingToken)
    else expect(info.fencingToken).toBeNull()
    if (traits.lease) expect(info.leaseRemainingMs).toBeGreaterThan(25_000)
    else expect(info.leaseRemainingMs).toBeNull()

    expect(await b.tryAcquire(k)).toBeNull()
    const start = Date.now()
    const err = await b.acquire(k).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockTimeoutError)
    expect((err as LockTimeoutError).kind).toBe('timeout')
    expect(Date.now() - start).toBeGreaterThanOrEqual(90)

    const none = make(factory, { maxRetries: 0 })
    const busy = await none.acquire(k).catch((e: unknown) => e)
    expect((busy as LockTimeoutError).kind).toBe('already_locked')

    await guard.release()
    expect(await a.isLocked(k)).toBe(false)
    const g2 = await b.acquire(k)
    expect(g2.fencingToken).toBeGreaterThan(guard.fencingToken)
    await g2.release()
  })

  it('extend, and a waiter woken by the release within the budget', async () => {
    const a = make(factory, { ttlMs: 2_000 })
    const b = make(factory, { retryIntervalMs: 1_000, maxRetries: 5 })
    const k = key('extend')
    const guard = await a.acquire(k)
    await a.extend(guard, 60_000)
    if (traits.lease) expect((await a.getInfo(k)).leaseRemainingMs).toBeGreaterThan(50_000)
    await expect(a.extend(guard, 50)).rejects.toThrow(RangeError)
    const waiting = b.acquire(k)
    await new Promise((r) => setTimeout(r, 100))
    await guard.release()
    const g2 = await waiting
    expect(await b.withLock(key('with'), async (g) => g.key)).toMatch(/^keyed-with-/)
    await g2.release()
  })

  it('await using releases the guard', async () => {
    const a = make(factory)
    const k = key('using')
    {
      await using g = await a.acquire(k)
      expect(await a.isLocked(k)).toBe(true)
      expect(g.key).toBe(k)
    }
    expect(await a.isLocked(k)).toBe(false)
  })
})

describe('inspection on the provider API', () => {
  it('reader-writer locks and semaphores report holders on every backend', async () => {
    for (const [name, factory] of BACKENDS) {
      const p = make(factory).provider
      if (name === 'mysql') {
        // Named locks are exclusive: MySQL has no reader-writer lock.
        expect(() => p.createReaderWriterLock(key('rw-mysql'))).toThrow(RangeError)
      }
      const rw = name === 'mysql' ? null : p.createReaderWriterLock(key(`rw-${name}`))
      if (rw) {
        const r1 = await rw.acquireRead()
        const r2 = await rw.acquireRead()
        const info = await rw.getInfo()
        expect(info.held, name).toBe(true)
        // File readers of one process share one OS lock: the OS cannot count them.
        // File readers of one process share one OS lock, PostgreSQL readers may share a session:
        // neither can count readers.
        expect(info.holders, name).toBe(name === 'file' || name === 'postgres' ? null : 2)
        await Promise.all([r1.release(), r2.release()])
        expect(await rw.isLocked(), name).toBe(false)
      }

      const sem = p.createSemaphore(key(`sem-${name}`), 2)
      const s1 = await sem.acquire()
      expect(await sem.isLocked(), name).toBe(false)
      expect((await sem.getInfo()).holders, name).toBe(1)
      const s2 = await sem.acquire()
      expect(await sem.isLocked(), name).toBe(true)
      await Promise.all([s1.release(), s2.release()])
    }
  })

  it('a per-acquire leaseMs sets the Redis lease; extend fails once the lock is lost', async () => {
    const locks = make(BACKENDS.find(([name]) => name === 'redis')![1]) as RedisDistributedLock
    const k = key('lease')
    const h = await locks.provider.createLock(k).acquire({ leaseMs: 5_000 })
    const left = (await locks.getInfo(k)).leaseRemainingMs!
    expect(left).toBeGreaterThan(4_000)
    expect(left).toBeLessThanOrEqual(5_000)
    const { Redis } = await import('ioredis')
    const raw = new Redis(redis.url)
    await raw.del(k)
    raw.disconnect()
    await expect(h.extend(10_000)).rejects.toBeInstanceOf(LockLostError)
    expect(h.signal.aborted).toBe(true)
    await h.release()
  })
})
