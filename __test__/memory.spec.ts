// MemoryLockProvider: the provider API's semantics inside one process, for users' unit tests.
import { describe, expect, it } from 'vitest'

import {
  AbortError,
  LockClosedError,
  LockLostError,
  LockTimeoutError,
  MemoryLockProvider,
  type LockProvider,
} from 'distlock'

describe('MemoryLockProvider', () => {
  it('is a LockProvider with exclusion, timeouts and increasing fencing tokens', async () => {
    const p: LockProvider = new MemoryLockProvider()
    const lock = p.createLock('m')
    const h = await lock.acquire()
    expect(await lock.tryAcquire()).toBeNull()
    await expect(lock.acquire({ timeoutMs: 20 })).rejects.toBeInstanceOf(LockTimeoutError)
    await h.release()
    const h2 = await lock.acquire()
    expect(h2.fencingToken).toBeGreaterThan(h.fencingToken)
    await h2.release()
    await p.close()
  })

  it('answers waiters on the driver the environment asks for', async () => {
    const p = new MemoryLockProvider()
    expect(p.driver).toBe(process.env.DISTLOCK_DRIVER === 'tokio' ? 'runtime' : 'event-loop')
    const lock = p.createLock('driver')
    const h = await lock.acquire()
    const waiting = lock.acquire({ timeoutMs: 5_000 })
    await h.release()
    const h2 = await waiting
    expect(h2.fencingToken).toBeGreaterThan(h.fencingToken)
    await h2.release()
    await p.close()
  })

  it('serves waiters first come, first served, and cancels with AbortSignal', async () => {
    const p = new MemoryLockProvider()
    const lock = p.createLock('fifo')
    const first = await lock.acquire()
    const order: number[] = []
    const waiters = [0, 1, 2, 3, 4].map((i) =>
      lock.acquire().then(async (h) => {
        order.push(i)
        await h.release()
      }),
    )
    const ac = new AbortController()
    const cancelled = lock.acquire({ signal: ac.signal })
    ac.abort()
    await expect(cancelled).rejects.toBeInstanceOf(AbortError)
    await first.release()
    await Promise.all(waiters)
    expect(order).toEqual([0, 1, 2, 3, 4])
    await p.close()
  })

  it('reader-writer locks prefer writers; semaphores count', async () => {
    const p = new MemoryLockProvider()
    const rw = p.createReaderWriterLock('doc')
    const r = await rw.acquireRead()
    const w = rw.acquireWrite()
    expect(await rw.tryAcquireRead()).toBeNull()
    await r.release()
    await (await w).release()
    const sem = p.createSemaphore('slots', 2)
    const a = await sem.acquire()
    const b = await sem.acquire()
    expect(await sem.tryAcquire()).toBeNull()
    await Promise.all([a.release(), b.release()])
    expect(() => p.createSemaphore('slots', 3).tryAcquire()).not.toThrow()
    await p.close()
  })

  it('close aborts held locks with LockLostError and rejects new acquires', async () => {
    const p = new MemoryLockProvider()
    const h = await p.createLock('c').acquire()
    const pending = p
      .createLock('c')
      .acquire()
      .catch((e: unknown) => e)
    await p.close()
    expect(h.signal.reason).toBeInstanceOf(LockLostError)
    expect(await pending).toBeInstanceOf(LockClosedError)
    expect(() => p.createLock('c')).toThrow(LockClosedError)
  })
})
