import { afterEach, describe, expect, it } from 'vitest'
import {
  AbortError,
  FileLockProvider,
  LockClosedError,
  LockError,
  LockHandle,
  LockLostError,
  LockTimeoutError,
  type LockProvider,
} from 'distlock'

import { tempDir } from './helpers'

const providers: FileLockProvider[] = []
function provider(dir = tempDir('lock')): FileLockProvider {
  const p = new FileLockProvider({ directory: dir })
  providers.push(p)
  return p
}
afterEach(async () => {
  await Promise.all(providers.splice(0).map((p) => p.close()))
})

describe('file lock: acquire, tryAcquire, release', () => {
  it('grants one holder at a time and hands over on release', async () => {
    const lock = provider().createLock('orders:42')
    const h1 = await lock.acquire()
    expect(h1).toBeInstanceOf(LockHandle)
    expect(h1.name).toBe('orders:42')
    expect(h1.isReleased).toBe(false)
    expect(await lock.tryAcquire()).toBeNull()
    const next = lock.acquire()
    await h1.release()
    expect(h1.isReleased).toBe(true)
    await h1.release() // idempotent
    const h2 = await next
    expect(h2.fencingToken).toBeGreaterThan(h1.fencingToken)
    await h2.release()
  })

  it('fencing tokens are bigints that increase across grants and providers', async () => {
    const dir = tempDir('fence')
    const a = provider(dir).createLock('f')
    const b = provider(dir).createLock('f')
    let last = 0n
    for (let i = 0; i < 10; i++) {
      const h = await (i % 2 ? a : b).acquire()
      expect(typeof h.fencingToken).toBe('bigint')
      expect(h.fencingToken).toBeGreaterThan(last)
      last = h.fencingToken
      await h.release()
    }
  })

  it('is not reentrant: a second acquire from the same process waits like any other', async () => {
    const lock = provider().createLock('nr')
    const h = await lock.acquire()
    await expect(lock.acquire({ timeoutMs: 30 })).rejects.toBeInstanceOf(LockTimeoutError)
    await h.release()
  })

  it('acquire with timeoutMs rejects with LockTimeoutError naming the lock and backend', async () => {
    const lock = provider().createLock('busy')
    const h = await lock.acquire()
    const err = await lock.acquire({ timeoutMs: 25 }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockTimeoutError)
    expect(err).toBeInstanceOf(LockError)
    expect((err as LockTimeoutError).code).toBe('ERR_LOCK_TIMEOUT')
    expect((err as Error).message).toBe('Timed out after 25 ms waiting for file lock "busy"')
    expect(await lock.tryAcquire({ timeoutMs: 25 })).toBeNull()
    await h.release()
  })

  it('await using releases at the end of the block', async () => {
    const lock = provider().createLock('using')
    {
      await using h = await lock.acquire()
      expect(await lock.tryAcquire()).toBeNull()
      expect(h.isReleased).toBe(false)
    }
    const again = await lock.tryAcquire()
    expect(again).not.toBeNull()
    await again!.release()
  })

  it('withLock returns the result and releases, also when the callback throws', async () => {
    const lock = provider().createLock('with')
    let seen: LockHandle | undefined
    expect(
      await lock.withLock(async (h) => {
        seen = h
        expect(await lock.tryAcquire()).toBeNull()
        return 42
      }),
    ).toBe(42)
    expect(seen!.isReleased).toBe(true)
    await expect(
      lock.withLock(() => {
        throw new Error('boom')
      }),
    ).rejects.toThrow('boom')
    const h = await lock.tryAcquire()
    expect(h).not.toBeNull()
    await h!.release()
  })

  it('distinct names do not block each other', async () => {
    const p = provider()
    const a = await p.createLock('a').acquire()
    const b = await p.createLock('b').tryAcquire()
    expect(b).not.toBeNull()
    await Promise.all([a.release(), b!.release()])
  })
})

describe('file reader-writer lock', () => {
  it('readers share, a writer excludes readers and writers', async () => {
    const dir = tempDir('rw')
    const rw = provider(dir).createReaderWriterLock('doc:7')
    const other = provider(dir).createReaderWriterLock('doc:7')
    const r1 = await rw.acquireRead()
    const r2 = await other.tryAcquireRead()
    expect(r2).not.toBeNull()
    expect(await other.tryAcquireWrite()).toBeNull()
    await r1.release()
    expect(await other.tryAcquireWrite({ timeoutMs: 20 })).toBeNull()
    await r2!.release()
    const w = await other.acquireWrite({ timeoutMs: 5_000 })
    expect(await rw.tryAcquireRead()).toBeNull()
    expect(await rw.tryAcquireWrite()).toBeNull()
    await w.release()
    expect(await rw.withReadLock(async () => 'read')).toBe('read')
    expect(await rw.withWriteLock(async () => 'write')).toBe('write')
  })

  it('a waiting writer is not starved by a stream of readers', async () => {
    const rw = provider().createReaderWriterLock('stream')
    const first = await rw.acquireRead()
    const writer = rw.acquireWrite({ timeoutMs: 5_000 })
    // Readers arriving after the writer queue behind it.
    expect(await rw.tryAcquireRead()).toBeNull()
    const lateReader = rw.acquireRead({ timeoutMs: 5_000 })
    await first.release()
    const w = await writer
    expect(
      await Promise.race([
        lateReader.then(() => 'reader'),
        new Promise((r) => setTimeout(() => r('writer holds'), 30)),
      ]),
    ).toBe('writer holds')
    await w.release()
    await (await lateReader).release()
  })

  it('the plain lock of a name is the writer side of its reader-writer lock', async () => {
    const p = provider()
    const r = await p.createReaderWriterLock('same').acquireRead()
    expect(await p.createLock('same').tryAcquire()).toBeNull()
    await r.release()
  })
})

describe('file semaphore', () => {
  it('admits maxCount holders across providers, with increasing tokens', async () => {
    const dir = tempDir('sem')
    const a = provider(dir).createSemaphore('gpu-slots', 3)
    const b = provider(dir).createSemaphore('gpu-slots', 3)
    expect(a.maxCount).toBe(3)
    const held = [await a.acquire(), await b.acquire(), await a.acquire()]
    expect(await b.tryAcquire()).toBeNull()
    expect(await a.tryAcquire({ timeoutMs: 20 })).toBeNull()
    const tokens = held.map((h) => h.fencingToken)
    expect(tokens.toSorted((x, y) => (x < y ? -1 : 1))).toEqual(tokens)
    const waiting = b.acquire({ timeoutMs: 5_000 })
    await held[0].release()
    const h4 = await waiting
    expect(h4.fencingToken).toBeGreaterThan(tokens[2])
    await Promise.all([...held, h4].map((h) => h.release()))
  })
})

describe('cancellation with AbortSignal', () => {
  it('aborting mid-wait rejects with AbortError and leaves nothing held', async () => {
    const dir = tempDir('abort')
    const holder = provider(dir).createLock('c')
    const waiterLock = provider(dir).createLock('c')
    const h = await holder.acquire()
    const controller = new AbortController()
    const waiting = waiterLock.acquire({ signal: controller.signal })
    await new Promise((r) => setTimeout(r, 30)) // reach the OS wait
    controller.abort(new Error('stop waiting'))
    const err = await waiting.catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AbortError)
    expect((err as AbortError).name).toBe('AbortError')
    expect((err as AbortError).code).toBe('ABORT_ERR')
    expect((err as AbortError).cause).toEqual(new Error('stop waiting'))
    await h.release()
    // The cancelled waiter must not end up holding the lock.
    const again = await holder.acquire({ timeoutMs: 5_000 })
    await again.release()
  })

  it('aborting an in-process queued waiter lets the next one in, in order', async () => {
    const lock = provider().createLock('q')
    const h = await lock.acquire()
    const controller = new AbortController()
    const order: string[] = []
    const cancelled = lock.acquire({ signal: controller.signal }).catch((e: unknown) => {
      order.push('cancelled')
      throw e
    })
    const next = lock.acquire().then((x) => (order.push('next'), x))
    controller.abort()
    await expect(cancelled).rejects.toBeInstanceOf(AbortError)
    await h.release()
    await (await next).release()
    expect(order).toEqual(['cancelled', 'next'])
  })

  it('an already-aborted signal rejects at once', async () => {
    const lock = provider().createLock('pre')
    await expect(lock.acquire({ signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortError)
    const h = await lock.tryAcquire()
    expect(h).not.toBeNull()
    await h!.release()
  })

  it('AbortSignal.timeout works as a deadline', async () => {
    const lock = provider().createLock('sigt')
    const h = await lock.acquire()
    await expect(lock.acquire({ signal: AbortSignal.timeout(30) })).rejects.toBeInstanceOf(AbortError)
    await h.release()
  })
})

describe('waiters', () => {
  it('1 000 concurrent waiters on one name complete, first come first served', async () => {
    const lock = provider().createLock('hot')
    const first = await lock.acquire()
    const order: number[] = []
    const all = Array.from({ length: 1000 }, (_, i) =>
      lock.acquire().then(async (h) => {
        order.push(i)
        await h.release()
      }),
    )
    await first.release()
    await Promise.all(all)
    expect(order).toEqual(Array.from({ length: 1000 }, (_, i) => i))
  })
})

describe('close', () => {
  it('releases held locks, aborts their signal with LockLostError and rejects pending and new acquires', async () => {
    const dir = tempDir('close')
    const p = new FileLockProvider({ directory: dir })
    const lock = p.createLock('x')
    const h = await lock.acquire()
    const signal = h.signal
    const pending = lock.acquire().catch((e: unknown) => e)
    await p.close()
    expect(await pending).toBeInstanceOf(LockClosedError)
    expect(h.isReleased).toBe(true)
    await expect.poll(() => signal.aborted, { timeout: 5_000 }).toBe(true)
    expect(signal.reason).toBeInstanceOf(LockLostError)
    expect((signal.reason as LockLostError).code).toBe('ERR_LOCK_LOST')
    expect((signal.reason as Error).message).toContain('file lock "x" was lost')
    await expect(lock.acquire()).rejects.toBeInstanceOf(LockClosedError)
    expect(() => p.createLock('y')).toThrow(LockClosedError)
    await h.release() // still fine after close
    await p.close() // idempotent
    const other = provider(dir).createLock('x')
    const again = await other.tryAcquire()
    expect(again).not.toBeNull()
    await again!.release()
  })

  it('a held handle signal stays quiet while the lock is held', async () => {
    const h = await provider().createLock('quiet').acquire()
    const signal = h.signal
    await new Promise((r) => setTimeout(r, 20))
    expect(signal.aborted).toBe(false)
    await h.release()
    expect(signal.aborted).toBe(false)
  })

  it('works with await using on the provider and satisfies LockProvider', async () => {
    let escaped: FileLockProvider
    {
      await using p = new FileLockProvider({ directory: tempDir('dispose') })
      escaped = p
      const generic: LockProvider = p
      await (await generic.createLock('z').acquire()).release()
    }
    expect(() => escaped.createLock('z')).toThrow(LockClosedError)
  })
})
