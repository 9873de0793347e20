// The Redis provider's removeUnusedFenceKeys: the counters of names nobody uses go, the others
// stay, tokens only grow, and it is safe while other providers use the names.
import Redis from 'ioredis'
import { describe, expect, it } from 'vitest'
import { RedisLockProvider } from 'distlock'

import { useLab } from './helpers'

const lab = useLab()

describe('Redis removeUnusedFenceKeys', () => {
  it('removes the counters of names nobody uses, keeps the others, and tokens still only grow', async () => {
    const own = await lab.services.startRedis()
    const raw = new Redis(own.url)
    try {
      await using app = new RedisLockProvider({ urls: own.url, keyPrefix: 'app:' })
      await using other = new RedisLockProvider({ urls: own.url, keyPrefix: 'other:' })
      const tokens = new Map<string, bigint>()
      for (const name of ['a', 'b', 'c']) {
        const h = await app.createLock(name).acquire()
        tokens.set(name, h.fencingToken)
        await h.release()
      }
      await (await app.createSemaphore('s', 2).acquire()).release()
      await (await other.createLock('x').acquire()).release()
      const held = await app.createLock('b').acquire()
      const reader = await app.createReaderWriterLock('r').acquireRead()
      const before = (await raw.keys('*:distlock:*fence')).toSorted()
      expect(before).toHaveLength(6)

      expect(await app.removeUnusedFenceKeys()).toBe(3) // a, c and the semaphore s
      expect((await raw.keys('*:distlock:*fence')).toSorted()).toEqual([
        '{app:b}:distlock:fence',
        '{app:r}:distlock:fence',
        '{other:x}:distlock:fence',
      ])
      const again = await app.createLock('a').acquire()
      expect(again.fencingToken > tokens.get('a')!).toBe(true)
      await again.release()
      await held.release()
      await reader.release()
      expect(await app.removeUnusedFenceKeys()).toBe(3) // a, b and r
      expect(await new RedisLockProvider({ urls: own.url }).removeUnusedFenceKeys()).toBe(1) // other:x
    } finally {
      raw.disconnect()
      own.stop()
    }
  })

  it('is safe while others use the names: no overlap, and every name’s tokens keep growing', async () => {
    const own = await lab.services.startRedis()
    try {
      const providers = [0, 1, 2].map(() => new RedisLockProvider({ urls: own.url }))
      await using cleaner = new RedisLockProvider({ urls: own.url })
      // More names than loops: each is idle now and then, and its counter can go.
      const names = Array.from({ length: 12 }, (_, i) => `n${i}`)
      const inside = new Map<string, number>()
      const last = new Map<string, bigint>()
      let overlaps = 0
      let regressions = 0
      let grants = 0
      let removed = 0
      const cleaner$ = { running: true }
      const cleaning = (async () => {
        for (let i = 0; cleaner$.running && i < 2_000; i++) {
          removed += await cleaner.removeUnusedFenceKeys()
          await new Promise((r) => setTimeout(r, 2))
        }
      })()
      const until = performance.now() + 3_000
      await Promise.all(
        [...providers, ...providers].map(async (p, loop) => {
          for (let i = 0; performance.now() < until && i < 5_000; i++) {
            const name = names[(i * 5 + loop * 7) % names.length]!
            const h = await p.createLock(name).acquire({ timeoutMs: 5_000 })
            if ((inside.get(name) ?? 0) > 0) overlaps++
            if (h.fencingToken <= (last.get(name) ?? 0n)) regressions++
            last.set(name, h.fencingToken)
            inside.set(name, (inside.get(name) ?? 0) + 1)
            await new Promise((r) => setImmediate(r))
            inside.set(name, inside.get(name)! - 1)
            await h.release()
            grants++
          }
        }),
      )
      cleaner$.running = false
      await cleaning
      for (const p of providers) await p.close()
      expect(overlaps).toBe(0)
      expect(regressions).toBe(0)
      expect(grants).toBeGreaterThan(300)
      expect(removed).toBeGreaterThan(0)
    } finally {
      own.stop()
    }
  })
})
