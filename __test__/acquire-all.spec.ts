// acquireAll and tryAcquireAll: overlapping sets taken in any order never deadlock or overlap,
// names taken in UTF-8 byte order and given back on timeout or abort, the set's signal aborting
// when one lock is lost, and RedLock taking all the locks in one round per server (behind the
// lab's fault proxy).
import Redis from 'ioredis'
import { describe, expect, it } from 'vitest'
import { FileLockProvider, MemoryLockProvider, RedisDistributedLock, RedisLockProvider } from 'distlock'

import { aborted, tempDir, thrown, useLab } from './helpers'

const lab = useLab()

describe('acquireAll', () => {
  it('overlapping sets taken in any order by many callers never deadlock or overlap', async () => {
    const dir = tempDir('all')
    // Two providers: the file locks of each exclude the other's, as across processes.
    await using p1 = new FileLockProvider({ directory: dir })
    await using p2 = new FileLockProvider({ directory: dir })
    const names = ['acct:a', 'acct:b', 'acct:c', 'acct:d', 'acct:é']
    const holders = new Map<string, number>()
    let overlaps = 0
    let rounds = 0
    const started = performance.now()
    await Promise.all(
      [p1, p2, p1, p2, p1, p2].map(async (p, loop) => {
        for (let i = 0; i < 60; i++) {
          // A different subset each round, listed in opposite orders by alternate loops.
          const subset = names.filter((_, k) => (k + i + loop) % 3 !== 0)
          const set = loop % 2 === 0 ? subset : subset.toReversed()
          const all = await p.acquireAll(set, { timeoutMs: 5_000 })
          for (const n of set) {
            if ((holders.get(n) ?? 0) > 0) overlaps++
            holders.set(n, (holders.get(n) ?? 0) + 1)
          }
          await new Promise((r) => setImmediate(r))
          for (const n of set) holders.set(n, holders.get(n)! - 1)
          await all.release()
          rounds++
        }
      }),
    )
    expect(overlaps).toBe(0)
    expect(rounds).toBe(360)
    expect(performance.now() - started).toBeLessThan(20_000)
  })

  it('takes names in UTF-8 byte order, and on timeout or abort releases what it took', async () => {
    await using locks = new MemoryLockProvider()
    const all = await locks.acquireAll(['b', 'é', 'a', 'Z'])
    expect(all.names).toEqual(['Z', 'a', 'b', 'é'])
    expect(all.isHeld).toBe(true)
    await all.release()
    expect(all.isReleased).toBe(true)

    const blocker = await locks.createLock('c').acquire()
    const err = await thrown(() => locks.acquireAll(['a', 'b', 'c'], { timeoutMs: 80 }))
    expect(err).toBeInstanceOf(Error)
    expect(err.message).toBe('Timed out after 80 ms waiting for lock "c" (3 of 3 in acquireAll)')
    expect(err.code).toBe('ERR_LOCK_TIMEOUT')
    for (const n of ['a', 'b']) expect(await locks.createLock(n).isLocked()).toBe(false)
    expect(await locks.tryAcquireAll(['a', 'c'])).toBeNull()
    expect(await locks.createLock('a').isLocked()).toBe(false)

    const controller = new AbortController()
    const waiting = locks.acquireAll(['a', 'c'], { signal: controller.signal })
    setTimeout(() => controller.abort(), 30)
    expect((await thrown(() => waiting)).name).toBe('AbortError')
    expect(await locks.createLock('a').isLocked()).toBe(false)
    await blocker.release()

    expect((await thrown(() => locks.acquireAll(['a', 'b', 'a']))).message).toBe('The "names" argument lists "a" twice')
    expect((await thrown(() => locks.acquireAll([]))).code).toBe('ERR_INVALID_ARG_VALUE')
    expect((await thrown(() => locks.acquireAll(['a'], { timeout: 5 } as never))).message).toContain(
      'Did you mean "timeoutMs"?',
    )
  })

  it('its signal aborts when any of the locks is lost (Redis); the keyed form works alike', async () => {
    const own = await lab.services.startRedis()
    try {
      await using locks = new RedisLockProvider({ urls: own.url, leaseMs: 1_000 })
      const all = await locks.acquireAll(['x', 'y'])
      const raw = new Redis(own.url)
      await raw.del('y')
      raw.disconnect()
      await aborted(all.signal)
      expect((all.signal.reason as Error).message).toMatch(/^redis lock "y" was lost/)
      expect(all.isHeld).toBe(false)
      await all.release()

      await using keyed = new RedisDistributedLock({ urls: own.url, maxRetries: 0 })
      const both = await keyed.acquireAll(['k1', 'k2'])
      const busy = await thrown(() => keyed.acquireAll(['k2', 'k3']))
      expect((busy as { kind?: string }).kind).toBe('already_locked')
      expect(await keyed.isLocked('k3')).toBe(false)
      await both.release()
      expect(await keyed.isLocked('k1')).toBe(false)
    } finally {
      own.stop()
    }
  })
})

describe('RedLock acquireAll', () => {
  it('takes all the locks in one round per server, all or none, and waits without deadlock', async () => {
    const servers = await Promise.all([0, 1, 2].map(() => lab.services.startRedis()))
    const { startProxy } = await import('../lab/index.mjs')
    const proxies = await Promise.all(servers.map((s) => startProxy(s.port)))
    try {
      const urls = proxies.map((p) => `redis://127.0.0.1:${p.port}`)
      await using a = new RedisLockProvider({ urls })
      await using b = new RedisLockProvider({ urls })
      // Connections up and scripts loaded, then every round trip takes 300 ms.
      await (await a.acquireAll(['warm:1', 'warm:2'])).release()
      for (const p of proxies) p.setMode('delay', 150)
      const started = performance.now()
      const four = await a.acquireAll(['k:4', 'k:3', 'k:2', 'k:1'])
      const took = performance.now() - started
      // One after another would be four round trips (1.2 s); together they are one.
      expect(took).toBeLessThan(900)
      expect(four.names).toEqual(['k:1', 'k:2', 'k:3', 'k:4'])
      await four.release()
      for (const p of proxies) p.setMode('pass')

      const blocker = await b.createLock('y').acquire()
      expect(await a.tryAcquireAll(['x', 'y', 'z'])).toBeNull()
      // Nothing of the failed round stays taken.
      for (const n of ['x', 'z']) {
        const h = await b.createLock(n).tryAcquire()
        expect(h, n).not.toBeNull()
        await h!.release()
      }
      const waiting = a.acquireAll(['z', 'y', 'x'], { timeoutMs: 10_000 })
      await new Promise((r) => setTimeout(r, 100))
      await blocker.release()
      const all = await waiting
      expect(all.names).toEqual(['x', 'y', 'z'])
      expect(all.isHeld).toBe(true)
      await all.release()

      // Overlapping sets listed in opposite orders by loops on both providers.
      const names = ['m:1', 'm:2', 'm:3', 'm:4']
      const inside = new Map<string, number>()
      let overlaps = 0
      let rounds = 0
      await Promise.all(
        [a, b, a, b].map(async (p, loop) => {
          for (let i = 0; i < 25; i++) {
            const subset = names.filter((_, k) => (k + i + loop) % 4 !== 0)
            const set = loop % 2 === 0 ? subset : subset.toReversed()
            const held = await p.acquireAll(set, { timeoutMs: 10_000 })
            for (const n of set) {
              if ((inside.get(n) ?? 0) > 0) overlaps++
              inside.set(n, (inside.get(n) ?? 0) + 1)
            }
            await new Promise((r) => setImmediate(r))
            for (const n of set) inside.set(n, inside.get(n)! - 1)
            await held.release()
            rounds++
          }
        }),
      )
      expect(overlaps).toBe(0)
      expect(rounds).toBe(100)
    } finally {
      for (const p of proxies) await p.close()
      for (const s of servers) s.stop()
    }
  })
})
