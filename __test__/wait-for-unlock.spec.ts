// waitForUnlock on the memory, file and Redis backends: it resolves once the name is free
// without taking it, and times out and aborts the way acquire does.
import { describe, expect, it } from 'vitest'
import { FileLockProvider, MemoryLockProvider, RedisLockProvider } from 'distlock'

import { tempDir, thrown, useLab } from './helpers'

const lab = useLab({ redis: true })

describe('waitForUnlock', () => {
  it('resolves once the name is free, without taking it; times out and aborts like acquire', async () => {
    for (const make of [
      () => new MemoryLockProvider(),
      () => new FileLockProvider({ directory: tempDir('wait-unlock') }),
      () => new RedisLockProvider({ urls: lab.redis.url }),
    ]) {
      await using p = make()
      const lock = p.createLock('wait-free')
      const before = (await lock.getInfo()).fencingToken
      await lock.waitForUnlock() // free already
      const held = await lock.acquire()
      let freed = false
      const waiting = lock.waitForUnlock({ timeoutMs: 5_000 }).then(() => (freed = true))
      await new Promise((r) => setTimeout(r, 60))
      expect(freed).toBe(false)
      await held.release()
      await waiting
      // It took nothing: the name is free and no grant was made after the release.
      expect(await lock.isLocked()).toBe(false)
      const token = (await lock.getInfo()).fencingToken
      if (token !== null) expect(token).toBe(held.fencingToken)
      void before

      const blocker = await lock.acquire()
      const err = await thrown(() => lock.waitForUnlock({ timeoutMs: 50 }))
      expect(err.code).toBe('ERR_LOCK_TIMEOUT')
      expect(err.message).toMatch(/^Timed out after 50 ms waiting for \w+ lock "wait-free" to be free$/)
      const controller = new AbortController()
      setTimeout(() => controller.abort('enough'), 30)
      const abortError = await thrown(() => lock.waitForUnlock({ signal: controller.signal }))
      expect(abortError.name).toBe('AbortError')
      await blocker.release()
    }
    const sem = new MemoryLockProvider().createSemaphore('wait-sem', 2)
    const one = await sem.acquire()
    await sem.waitForUnlock({ timeoutMs: 100 }) // a permit is still free
    await one.release()
  })
})
