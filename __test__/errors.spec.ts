// Errors a user meets on a bad day, through the public package: withLock keeps the callback's
// error (a SuppressedError when the release fails too), state errors on a released or lost
// handle, LockBackendError keeping its cause (the OS error, the SQLSTATE, the Redis reply prefix,
// a refused connect) and stacks that start at the caller's frame. Against redis-server processes
// this spec starts and the PostgreSQL server the lab finds.
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  FileLockProvider,
  LockBackendError,
  LockStateError,
  LockLostError,
  MemoryLockProvider,
  PostgresLockProvider,
  RedisDistributedLock,
  RedisLockProvider,
  SuppressedError,
} from 'distlock'

import { aborted, thrown, useLab } from './helpers'

const lab = useLab({ redis: true })

describe('withLock keeps the caller’s error', () => {
  it('a callback error is rethrown as is when the release works', async () => {
    await using locks = new MemoryLockProvider()
    const mine = new Error('mine')
    expect(await thrown(() => locks.createLock('w').withLock(() => Promise.reject(mine)))).toBe(mine)
    expect(await locks.createLock('w').isLocked()).toBe(false)
  })

  it('when the release fails too, a SuppressedError carries both (Redis server stopped)', async () => {
    const own = await lab.services.startRedis()
    try {
      await using locks = new RedisLockProvider({ urls: own.url, serverTimeoutMs: 300 })
      await using keyed = new RedisDistributedLock({ urls: own.url, serverTimeoutMs: 300 })
      for (const run of [
        (fn: () => Promise<never>) => locks.createLock('suppressed').withLock(fn),
        (fn: () => Promise<never>) => keyed.withLock('suppressed-keyed', fn),
      ]) {
        const mine = new Error('the work failed')
        const err = (await thrown(() =>
          run(async () => {
            own.pause() // the release cannot reach the server
            throw mine
          }),
        )) as Error & { error: unknown; suppressed: unknown }
        own.resume()
        expect(err).toBeInstanceOf(SuppressedError)
        expect(err.name).toBe('SuppressedError')
        expect(err.error).toBe(mine)
        expect(err.suppressed).toBeInstanceOf(LockBackendError)
        expect(err.message).toMatch(
          /^The callback under redis lock "suppressed(-keyed)?" threw, and the release failed too$/,
        )
      }
    } finally {
      own.resume()
      own.stop()
    }
  })
})

describe('state errors', () => {
  it('extend on a released handle is a LockStateError, not a RangeError', async () => {
    for (const make of [() => new MemoryLockProvider(), () => new RedisLockProvider({ urls: lab.redis.url })]) {
      await using locks = make()
      const h = await locks.createLock('state').acquire()
      await h.release()
      const err = await thrown(() => h.extend(1_000))
      expect(err).toBeInstanceOf(LockStateError)
      expect(err).not.toBeInstanceOf(RangeError)
      expect(err.code).toBe('ERR_INVALID_STATE')
      expect(err.message).toMatch(/^Cannot extend (memory|redis) lock "state": it was released$/)
      // A bad argument is still an argument error.
      const h2 = await locks.createLock('state').acquire()
      expect((await thrown(() => h2.extend(5))).code).toBe('ERR_INVALID_ARG_VALUE')
      await h2.release()
    }
  })

  it('extend after the lease ran out names the lock once', async () => {
    await using locks = new RedisLockProvider({ urls: lab.redis.url })
    const h = await locks.createLock('lease').acquire({ leaseMs: 150, autoRenew: false })
    await aborted(h.signal)
    const err = await thrown(() => h.extend(1_000))
    expect(err).toBeInstanceOf(LockLostError)
    // It read `redis lock "redis lock \"lease\"" was lost` before.
    expect(err.message).toMatch(/^redis lock "lease" was lost: /)
  })
})

describe('LockBackendError keeps its cause', () => {
  it('file: the OS error as Node words it (code, errno) and the path', async () => {
    // A directory under a regular file: ENOTDIR, whoever runs the test (root included).
    await using locks = new FileLockProvider({ directory: '/etc/hostname/locks' })
    const err = (await thrown(() => locks.createLock('os').acquire({ timeoutMs: 100 }))) as LockBackendError
    expect(err).toBeInstanceOf(LockBackendError)
    expect(err.errno).toBe(-20)
    expect(err.syscall).toBe('stat')
    expect(err.path).toMatch(/^\/etc\/hostname\/locks/)
    const cause = err.cause as Error & { code?: string; errno?: number }
    expect(cause).toBeInstanceOf(Error)
    expect(cause.code).toBe('ENOTDIR')
    expect(cause.errno).toBe(-20)
    expect((cause as { syscall?: string }).syscall).toBe('stat')
    expect(err.message).not.toMatch(/Os \{|kind:|Custom \{/)
  })

  it('PostgreSQL: the SQLSTATE and the server', async () => {
    const { findPostgres } = lab.services
    const { url } = await findPostgres()
    const u = new URL(url)
    u.pathname = '/distlock_no_such_database'
    await using pg = new PostgresLockProvider({ connectionString: u.toString() })
    const err = (await thrown(() => pg.createLock('sqlstate').tryAcquire())) as LockBackendError
    expect(err).toBeInstanceOf(LockBackendError)
    expect(err.sqlState).toBe('3D000') // invalid_catalog_name
    expect(err.server).toBe(`${u.hostname}:${u.port || 5432}/distlock_no_such_database`)
    expect((err.cause as { code?: string }).code).toBe('3D000')
  })

  it('Redis: the error reply prefix and the server, never the password', async () => {
    const locked = await lab.services.startRedis(['--requirepass', 'right'])
    try {
      const url = `redis://:wrong-secret@127.0.0.1:${locked.port}`
      await using r = new RedisLockProvider({ urls: url, serverTimeoutMs: 1_000 })
      const err = (await thrown(() => r.createLock('prefix').acquire({ timeoutMs: 2_000 }))) as LockBackendError
      expect(err).toBeInstanceOf(LockBackendError)
      expect(err.redisError).toBe('WRONGPASS')
      expect(err.server).toBe(`127.0.0.1:${locked.port}`)
      expect((err.cause as { code?: string }).code).toBe('WRONGPASS')
      expect(JSON.stringify({ m: err.message, c: (err.cause as Error).message, s: err.server })).not.toContain(
        'wrong-secret',
      )
    } finally {
      locked.stop()
    }
  })

  it('PostgreSQL and Redis: a refused connection is ECONNREFUSED from connect, in plain words', async () => {
    // Port 1 on loopback: nothing listens there.
    await using pg = new PostgresLockProvider({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres' })
    await using r = new RedisLockProvider({ urls: 'redis://127.0.0.1:1' })
    for (const lock of [pg.createLock('refused'), r.createLock('refused')]) {
      const err = (await thrown(() => lock.acquire({ timeoutMs: 300 }))) as LockBackendError
      expect(err).toBeInstanceOf(LockBackendError)
      expect(err.errno).toBeLessThan(0)
      expect(err.syscall).toBe('connect')
      const cause = err.cause as Error & { code?: string; errno?: number }
      expect(cause.code).toBe('ECONNREFUSED')
      expect(cause.errno).toBe(err.errno)
      expect(err.message).toContain('Connection refused')
      expect(err.message).not.toMatch(/Os \{|kind:|Custom \{/)
      expect(Object.keys(err)).not.toContain('path')
    }
  })
})

describe('error stacks', () => {
  it('start at the caller’s frame, not inside distlock', async () => {
    await using locks = new MemoryLockProvider()
    const held = await locks.createLock('stack').acquire()
    async function callerOfAcquire() {
      await locks.createLock('stack').acquire({ timeoutMs: 10 })
    }
    const err = await thrown(callerOfAcquire)
    const frames = err.stack!.split('\n').filter((l) => l.trimStart().startsWith('at '))
    expect(err.stack!.split('\n')[0]).toBe('LockTimeoutError: Timed out after 10 ms waiting for memory lock "stack"')
    expect(frames[0]).toMatch(/at (async )?callerOfAcquire \(.*errors\.spec\.ts:\d+:\d+\)/)
    expect(frames.some((l) => l.includes(`${join(__dirname, '..', 'dist')}`))).toBe(false)
    await held.release()
  })
})
