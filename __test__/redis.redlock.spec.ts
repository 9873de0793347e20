// RedLock over three independent redis-server processes, and a three-master Redis Cluster, all
// started by this spec on free loopback ports.
import Redis from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { LockBackendError, RedisLockProvider } from 'distlock'

import { eventually } from './helpers'
import type { RedisServer } from '../lab/index.mjs' with { 'resolution-mode': 'import' }

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
let services: Services
let servers: RedisServer[] = []
const providers: RedisLockProvider[] = []
let seq = 0
const unique = (tag: string) => `${tag}-${process.pid}-${seq++}`

function provider(urls: string[], serverTimeoutMs = 300): RedisLockProvider {
  const p = new RedisLockProvider({ urls, serverTimeoutMs })
  providers.push(p)
  return p
}

async function holders(name: string, among = servers): Promise<number> {
  let n = 0
  for (const s of among) {
    const c = new Redis(s.url)
    n += await c.exists(name)
    c.disconnect()
  }
  return n
}

beforeAll(async () => {
  services = await import('../lab/index.mjs')
  servers = await Promise.all([0, 1, 2].map(() => services.startRedis()))
})

afterAll(async () => {
  await Promise.all(providers.map((p) => p.close()))
  services.stopServices()
})

describe('RedLock over three servers', () => {
  it('grants on every server, and keeps working with one server hung or stopped', async () => {
    const urls = servers.map((s) => s.url)
    const a = provider(urls)
    const b = provider(urls)
    const name = unique('rl')
    const h = await a.createLock(name).acquire()
    // The acquire returns at a quorum (2 of 3); the last server's grant lands a moment later.
    await eventually(async () => (await holders(name)) === 3, 1_000)
    expect(await b.createLock(name).tryAcquire()).toBeNull()
    await h.release()

    servers[2]!.pause()
    try {
      const start = Date.now()
      const h2 = await b.createLock(name).acquire({ timeoutMs: 2_000 })
      expect(Date.now() - start).toBeLessThan(300)
      expect(h2.fencingToken).toBeGreaterThan(h.fencingToken)
      expect(await a.createLock(name).tryAcquire()).toBeNull()
      await h2.release()
    } finally {
      servers[2]!.resume()
    }

    servers[0]!.stop()
    const h3 = await a.createLock(name).acquire({ timeoutMs: 2_000 })
    expect(await b.createLock(name).tryAcquire()).toBeNull()
    await h3.release()

    servers[1]!.stop()
    const other = unique('rl-majority-down')
    const err = await a
      .createLock(other)
      .acquire({ timeoutMs: 1_000 })
      .catch((e: Error) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toContain('no quorum of 2 of 3')
    await new Promise((r) => setTimeout(r, 100))
    expect(await holders(other, [servers[2]!])).toBe(0)
  })

  it('semaphores need one deployment', async () => {
    const fresh = await Promise.all([0, 1, 2].map(() => services.startRedis()))
    const p = provider(fresh.map((s) => s.url))
    // Refused where it is asked for, not at the first acquire.
    expect(() => p.createSemaphore('s', 2)).toThrow(RangeError)
    expect(() => p.createSemaphore('s', 2)).toThrow(/no semaphore on RedLock/)
  })
})

describe('Redis Cluster', () => {
  it('locks names on every master, reader-writer locks and semaphores in one slot each', async () => {
    const cluster = await services.startRedisCluster()
    const a = provider([cluster.url], 1_000)
    const b = provider([cluster.url], 1_000)
    const names = Array.from({ length: 20 }, (_, i) => unique(`cl${i}`))
    const handles = await Promise.all(names.map((n) => a.createLock(n).acquire()))
    for (const n of names) expect(await b.createLock(n).tryAcquire()).toBeNull()
    await Promise.all(handles.map((h) => h.release()))
    for (const [i, n] of names.entries()) {
      const h = await b.createLock(n).acquire({ timeoutMs: 1_000 })
      expect(h.fencingToken).toBeGreaterThan(handles[i]!.fencingToken)
      await h.release()
    }
    const rw = unique('cl-rw')
    const r = await a.createReaderWriterLock(rw).acquireRead()
    expect(await b.createReaderWriterLock(rw).tryAcquireWrite()).toBeNull()
    const writer = b.createReaderWriterLock(rw).acquireWrite({ timeoutMs: 5_000 })
    await r.release()
    await (await writer).release()
    const sem = a.createSemaphore(unique('cl-sem'), 1)
    const s1 = await sem.acquire()
    expect(await sem.tryAcquire()).toBeNull()
    await s1.release()
  }, 60_000)
})
