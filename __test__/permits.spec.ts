// Semaphore permits on every backend: taken all or none, counted by getInfo, queued first come
// first served; bad counts refused with errors that name them, and waitForUnlock for several.
import { inspect } from 'node:util'
import { describe, expect, it } from 'vitest'
import {
  FileLockProvider,
  MemoryLockProvider,
  PostgresLockProvider,
  RedisLockProvider,
  type LockProvider,
} from 'distlock'

import { tempDir, thrown, useLab } from './helpers'

const lab = useLab({ redis: true })

/** A fresh provider of every backend, by name (Redis: the shared test server). */
const everyBackend = (): Array<[string, () => Promise<LockProvider>]> => [
  ['memory', async () => new MemoryLockProvider()],
  ['file', async () => new FileLockProvider({ directory: tempDir('permits') })],
  ['postgres', async () => new PostgresLockProvider({ connectionString: process.env.DISTLOCK_TEST_PG_URL! })],
  ['redis', async () => new RedisLockProvider({ urls: lab.redis.url })],
]

describe('semaphore permits', () => {
  it('are taken all or none, counted by getInfo, and queued first come first served on every backend', async () => {
    for (const [backend, make] of everyBackend()) {
      await using locks = await make()
      const name = `permits-${backend}-${process.pid}-${Math.random()}`
      const sem = locks.createSemaphore(name, 4)
      const three = await sem.acquire({ permits: 3 })
      expect(three.permits, backend).toBe(3)
      expect(await sem.tryAcquire({ permits: 2 }), backend).toBeNull()
      expect((await sem.getInfo()).holders, backend).toBe(3)
      const one = (await sem.tryAcquire())!
      expect(one.permits).toBe(1)
      expect(one.fencingToken > three.fencingToken, backend).toBe(true)
      expect(await sem.isLocked(), backend).toBe(true)
      await one.release()
      // A request for all four queues first; one for a single permit after it does not overtake it.
      const order: string[] = []
      const all = sem.acquire({ permits: 4, timeoutMs: 10_000 }).then((h) => (order.push('four'), h))
      const single = sem.acquire({ timeoutMs: 10_000 }).then((h) => (order.push('one'), h))
      await new Promise((r) => setTimeout(r, 100))
      expect(order, backend).toEqual([])
      await three.release()
      const four = await all
      expect(four.permits).toBe(4)
      await new Promise((r) => setTimeout(r, 50))
      expect(order, backend).toEqual(['four'])
      await four.release()
      await (await single).release()
      expect(order, backend).toEqual(['four', 'one'])
      expect((await sem.getInfo()).holders, backend).toBe(0)
    }
  })

  it('refuses bad counts with errors that name them, and waitForUnlock can wait for several', async () => {
    await using locks = new MemoryLockProvider()
    const sem = locks.createSemaphore('bad-permits', 3)
    let err = await thrown(() => sem.acquire({ permits: 4 }))
    expect(err).toBeInstanceOf(RangeError)
    expect(err.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(err.message).toMatch(/permits.*from 1 to the semaphore's maxCount 3, got 4/)
    for (const bad of [0, 1.5, Number.NaN]) {
      expect((await thrown(() => sem.tryAcquire({ permits: bad }))).code).toBe('ERR_INVALID_ARG_VALUE')
    }
    err = await thrown(() => sem.acquire({ permits: '2' } as never))
    expect(err).toBeInstanceOf(TypeError)
    expect(err.message).toBe('The "options.permits" property must be of type number. Received type string ("2")')
    err = await thrown(() => locks.createLock('m').acquire({ permits: 2 } as never))
    expect(err.message).toMatch(/^The "options" argument has an unknown property "permits"/)
    expect((await thrown(() => sem.waitForUnlock({ permits: 9 }))).code).toBe('ERR_INVALID_ARG_VALUE')

    const two = await sem.acquire({ permits: 2 })
    await sem.waitForUnlock({ permits: 1, timeoutMs: 100 })
    expect((await thrown(() => sem.waitForUnlock({ permits: 2, timeoutMs: 100 }))).code).toBe('ERR_LOCK_TIMEOUT')
    const freed = sem.waitForUnlock({ permits: 3, timeoutMs: 5_000 })
    setTimeout(() => void two.release(), 50)
    await freed
    expect(inspect(await sem.acquire({ permits: 3 }))).toContain('permits: 3')
  })
})
