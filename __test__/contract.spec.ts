// The contract every provider keeps, run against each backend through the public package:
// exclusion, busy as null, timeouts, FIFO hand-over, fencing order, cancellation, semaphores
// with permits, the reader-writer lock (or its documented refusal), close, and bad input.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import {
  AbortError,
  LockLostError,
  EtcdLockProvider,
  FileLockProvider,
  LockTimeoutError,
  MemoryLockProvider,
  MySqlLockProvider,
  PostgresLockProvider,
  RedisLockProvider,
  type LockHandle,
  type LockProvider,
} from 'distlock'

import { eventually, tempDir } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

interface Backend {
  label: string
  /** Readers share; false: `createReaderWriterLock` throws a RangeError. */
  readerWriter: boolean
  /** Two providers that contend like two processes (for memory: the same one). */
  pair(): [LockProvider, LockProvider]
}

let services: Services
let redisUrl: string
let etcdEndpoint: string
const dir = tempDir('contract')
const PG_URL = process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const MYSQL_URL = process.env.DISTLOCK_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'
const open: LockProvider[] = []
const keep = <T extends LockProvider>(p: T): T => (open.push(p), p)
const twice = <T extends LockProvider>(make: () => T): [T, T] => [keep(make()), keep(make())]

const BACKENDS: Backend[] = [
  { label: 'file', readerWriter: true, pair: () => twice(() => new FileLockProvider({ directory: dir })) },
  {
    label: 'memory',
    readerWriter: true,
    pair: () => {
      const p = keep(new MemoryLockProvider())
      return [p, p]
    },
  },
  {
    label: 'postgres',
    readerWriter: true,
    pair: () => twice(() => new PostgresLockProvider({ connectionString: PG_URL })),
  },
  { label: 'redis', readerWriter: true, pair: () => twice(() => new RedisLockProvider({ urls: redisUrl })) },
  {
    label: 'mysql',
    readerWriter: false,
    pair: () => twice(() => new MySqlLockProvider({ connectionString: MYSQL_URL })),
  },
  { label: 'etcd', readerWriter: true, pair: () => twice(() => new EtcdLockProvider({ endpoints: etcdEndpoint })) },
]

beforeAll(async () => {
  services = await import('../lab/index.mjs')
  redisUrl = (await services.startRedis()).url
  etcdEndpoint = (await services.startEtcd()).endpoint
})

afterAll(async () => {
  await Promise.all(open.map((p) => p.close()))
  services.stopServices()
})

let seq = 0
const unique = (tag: string) => `contract-${tag}-${process.pid}-${Date.now()}-${seq++}`

describe.each(BACKENDS)('the $label provider', (backend) => {
  it('excludes, reports busy as null, and times out with LockTimeoutError', async () => {
    const [a, b] = backend.pair()
    const name = unique('mutex')
    const h = await a.createLock(name).acquire({ timeoutMs: 5_000 })
    expect(await b.createLock(name).tryAcquire()).toBeNull()
    expect((await b.createLock(name).getInfo()).held).toBe(true)
    const started = Date.now()
    const err = await b
      .createLock(name)
      .acquire({ timeoutMs: 250 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockTimeoutError)
    expect((err as Error).message).toContain(name)
    expect(Date.now() - started).toBeGreaterThanOrEqual(240)
    await h.release()
    expect(h.isReleased).toBe(true)
    await h.release() // idempotent
    // A snapshot: on MySQL the timed-out waiter's server wait may still be ending (killed, and
    // a grant that raced the kill given back) for a few ms.
    await eventually(async () => !(await b.createLock(name).getInfo()).held, 3_000)
  })

  it('hands the lock to waiters in arrival order, with strictly increasing fencing tokens', async () => {
    const [a, b] = backend.pair()
    const name = unique('fifo')
    const first = await a.createLock(name).acquire()
    const order: number[] = []
    const tokens: bigint[] = [first.fencingToken]
    const waiters: Promise<void>[] = []
    for (let i = 0; i < 3; i++) {
      waiters.push(
        b
          .createLock(name)
          .acquire({ timeoutMs: 10_000 })
          .then(async (h) => {
            order.push(i)
            tokens.push(h.fencingToken)
            await new Promise((r) => setTimeout(r, 10))
            await h.release()
          }),
      )
      // Let each waiter queue before the next one arrives.
      await new Promise((r) => setTimeout(r, 50))
    }
    await first.release()
    await Promise.all(waiters)
    expect(order).toEqual([0, 1, 2])
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]! > tokens[i - 1]!).toBe(true)
  })

  it('an AbortSignal cancels a wait with AbortError and leaves nothing held', async () => {
    const [a, b] = backend.pair()
    const name = unique('abort')
    const h = await a.createLock(name).acquire()
    const ac = new AbortController()
    const waiting = b
      .createLock(name)
      .acquire({ signal: ac.signal })
      .catch((e: unknown) => e)
    await new Promise((r) => setTimeout(r, 100))
    ac.abort()
    expect(await waiting).toBeInstanceOf(AbortError)
    await h.release()
    const next = await b.createLock(name).acquire({ timeoutMs: 5_000 })
    await next.release()
  })

  it('withLock releases when its function throws', async () => {
    const [a, b] = backend.pair()
    const name = unique('with')
    await expect(
      a.createLock(name).withLock(async () => {
        throw new Error('boom')
      }),
    ).rejects.toThrow('boom')
    const h = await b.createLock(name).tryAcquire()
    expect(h).not.toBeNull()
    await h!.release()
  })

  it('a semaphore admits maxCount permits, takes several all or none', async () => {
    const [a, b] = backend.pair()
    const name = unique('sem')
    const one = await a.createSemaphore(name, 3).acquire({ timeoutMs: 5_000 })
    const two = await b.createSemaphore(name, 3).acquire({ permits: 2, timeoutMs: 5_000 })
    expect(await b.createSemaphore(name, 3).tryAcquire()).toBeNull()
    expect((await a.createSemaphore(name, 3).getInfo()).holders).toBe(3)
    await two.release()
    expect(await b.createSemaphore(name, 3).tryAcquire({ permits: 3 })).toBeNull()
    const again = await b.createSemaphore(name, 3).acquire({ permits: 2, timeoutMs: 5_000 })
    expect(again.fencingToken > one.fencingToken).toBe(true)
    await one.release()
    await again.release()
  })

  it(
    backend.readerWriter
      ? 'readers share a reader-writer lock and a writer excludes them'
      : 'createReaderWriterLock throws a RangeError that says why',
    async () => {
      const [a, b] = backend.pair()
      const name = unique('rw')
      if (!backend.readerWriter) {
        expect(() => a.createReaderWriterLock(name)).toThrow(RangeError)
        return
      }
      const r1 = await a.createReaderWriterLock(name).acquireRead()
      const r2 = await b.createReaderWriterLock(name).acquireRead({ timeoutMs: 5_000 })
      expect(await b.createReaderWriterLock(name).tryAcquireWrite()).toBeNull()
      await r1.release()
      await r2.release()
      const w = await b.createReaderWriterLock(name).acquireWrite({ timeoutMs: 5_000 })
      expect(await a.createReaderWriterLock(name).tryAcquireRead()).toBeNull()
      await w.release()
    },
  )

  it('assertHeld() returns while the lock is held and throws LockLostError once it is not', async () => {
    const [a] = backend.pair()
    const h = await a.createLock(unique('assert')).acquire()
    expect(h.assertHeld()).toBeUndefined()
    await h.release()
    expect(() => h.assertHeld()).toThrow(LockLostError)
    expect(() => h.assertHeld()).toThrow(/was released/)
    // Lost by the provider's close: the loss's own reason.
    const [c] = backend.pair()
    const lost = await c.createLock(unique('assert-lost')).acquire()
    await c.close()
    expect(() => lost.assertHeld()).toThrow(LockLostError)
  })

  it('close() rejects waits, aborts held signals, and frees the locks', async () => {
    const [a, b] = backend.pair()
    const name = unique('close')
    const other = unique('close-other')
    const held: LockHandle = (await b.createLock(other).acquire()) as LockHandle
    if (a === b) {
      // One memory provider stands for both sides: closing it ends everything.
      await a.close()
      expect(held.signal.aborted).toBe(true)
      return
    }
    const h = await a.createLock(name).acquire()
    const waiting = b
      .createLock(name)
      .acquire()
      .catch((e: unknown) => e)
    await new Promise((r) => setTimeout(r, 50))
    await b.close()
    expect(held.signal.aborted).toBe(true)
    expect(String(await waiting)).toMatch(/closed/)
    expect(() => b.createLock(name)).toThrow(/closed/)
    await h.release()
    const c = keep(backend.pair()[0])
    const again = await c.createLock(other).acquire({ timeoutMs: 5_000 })
    await again.release()
  })

  it('bad input throws errors that name it, and nothing stays locked', async () => {
    const [a] = backend.pair()
    expect(() => a.createLock('')).toThrow(/name/)
    expect(() => a.createSemaphore(unique('bad'), 0)).toThrow(RangeError)
    const name = unique('bad')
    await expect(a.createLock(name).acquire({ timeoutMs: -1 })).rejects.toThrow(/timeoutMs/)
    await expect(a.createSemaphore(name, 2).acquire({ permits: 3 })).rejects.toThrow(/permits/)
    const h = await a.createLock(name).tryAcquire()
    expect(h).not.toBeNull()
    await h!.release()
  })
})
