/**
 * What users meet on a bad day: strict options, errors that keep their cause, state errors,
 * signal-shaped objects, name limits and what a handle shows. Through the public package.
 */
import { inspect } from 'node:util'
import Redis from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  AbortError,
  FileDistributedLock,
  FileLockProvider,
  LockBackendError,
  LockStateError,
  MemoryDistributedLock,
  MemoryLockProvider,
  PostgresDistributedLock,
  PostgresLockProvider,
  RedisDistributedLock,
  RedisLockProvider,
  SuppressedError,
} from 'distlock'

import { eventually, tempDir } from './helpers'
import type { RedisServer } from '../scripts/test-services.mjs' with { 'resolution-mode': 'import' }

type Services = typeof import('../scripts/test-services.mjs', { with: { 'resolution-mode': 'import' } })

let services: Services
let redis: RedisServer

beforeAll(async () => {
  services = await import('../scripts/test-services.mjs')
  redis = await services.startRedis()
})

afterAll(() => services?.stopServices())

/** Runs `fn` and returns what it threw (failing the test if it did not throw). */
async function thrown(fn: () => unknown): Promise<Error & { code?: string }> {
  try {
    await fn()
  } catch (err) {
    return err as Error & { code?: string }
  }
  throw new Error('expected a throw')
}

describe('unknown option keys', () => {
  it('an acquire with a mistyped option rejects at once, naming it and the likely key', async () => {
    await using locks = new MemoryLockProvider()
    const held = await locks.createLock('typo').acquire()
    const started = performance.now()
    // `timeout` instead of `timeoutMs` used to wait forever on a held lock.
    const err = await thrown(() => locks.createLock('typo').acquire({ timeout: 100 } as never))
    expect(performance.now() - started).toBeLessThan(1_000)
    expect(err).toBeInstanceOf(TypeError)
    expect(err.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(err.message).toBe('The "options" argument has an unknown property "timeout". Did you mean "timeoutMs"?')
    for (const call of [
      () => locks.createLock('typo').tryAcquire({ timoutMs: 0 } as never),
      () => locks.createReaderWriterLock('typo').acquireRead({ TimeoutMs: 5 } as never),
      () => locks.createSemaphore('typo', 2).withLock(() => 1, { leasems: 200 } as never),
    ]) {
      const e = await thrown(call)
      expect(e.code).toBe('ERR_INVALID_ARG_VALUE')
      expect(e.message).toMatch(/unknown property "\w+"\. Did you mean "(timeoutMs|leaseMs)"\?$/)
    }
    // Far from every known key: the message lists them instead.
    const far = await thrown(() => locks.createLock('typo').acquire({ priority: 1 } as never))
    expect(far.message).toBe(
      'The "options" argument has an unknown property "priority". Known properties: "timeoutMs", "signal", "leaseMs".',
    )
    await held.release()
    // Nothing was left waiting or held.
    expect(await locks.createLock('typo').isLocked()).toBe(false)
  })

  it('providers and keyed classes reject unknown keys instead of ignoring them', () => {
    const cases: [() => unknown, string, string | undefined][] = [
      // `dir` used to lock silently in the default directory.
      [() => new FileLockProvider({ dir: tempDir('typo') } as never), 'dir', 'directory'],
      [
        () => new PostgresLockProvider({ connectionString: 'postgres://h/db', maxConnection: 2 } as never),
        'maxConnection',
        'maxConnections',
      ],
      [() => new RedisLockProvider({ url: 'redis://127.0.0.1:1' } as never), 'url', 'urls'],
      [() => new RedisLockProvider({ urls: 'redis://127.0.0.1:1', leaseMS: 500 } as never), 'leaseMS', 'leaseMs'],
      [() => new MemoryDistributedLock({ ttl: 500 } as never), 'ttl', 'ttlMs'],
      [() => new FileDistributedLock({ maxRetry: 3 } as never), 'maxRetry', 'maxRetries'],
      [
        () => new RedisDistributedLock({ urls: 'redis://127.0.0.1:1', retryInterval: 5 } as never),
        'retryInterval',
        'retryIntervalMs',
      ],
      [
        () => new PostgresDistributedLock({ connectionString: 'postgres://h/db', scop: 'session' } as never),
        'scop',
        'scope',
      ],
      [() => new MemoryDistributedLock({ colour: 'red' } as never), 'colour', undefined],
    ]
    for (const [make, key, near] of cases) {
      let err: (Error & { code?: string }) | undefined
      try {
        make()
      } catch (e) {
        err = e as Error & { code?: string }
      }
      expect(err, key).toBeInstanceOf(TypeError)
      expect(err!.code).toBe('ERR_INVALID_ARG_VALUE')
      expect(err!.message).toContain(`unknown property "${key}"`)
      if (near) expect(err!.message).toContain(`Did you mean "${near}"?`)
      else expect(err!.message).toContain('Known properties:')
    }
  })

  it('keyed calls check their options too', async () => {
    await using keyed = new MemoryDistributedLock()
    const err = await thrown(() => keyed.acquire('k', { timeoutMs: 10 } as never))
    expect(err.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(err.message).toContain('unknown property "timeoutMs"')
    expect(await keyed.isLocked('k')).toBe(false)
  })
})

describe('withLock keeps the caller’s error', () => {
  it('a callback error is rethrown as is when the release works', async () => {
    await using locks = new MemoryLockProvider()
    const mine = new Error('mine')
    expect(await thrown(() => locks.createLock('w').withLock(() => Promise.reject(mine)))).toBe(mine)
    expect(await locks.createLock('w').isLocked()).toBe(false)
  })

  it('when the release fails too, a SuppressedError carries both (Redis server stopped)', async () => {
    const own = await services.startRedis()
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
    for (const make of [() => new MemoryLockProvider(), () => new RedisLockProvider({ urls: redis.url })]) {
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
})

/** A minimal signal of another realm or library: not an instance of AbortSignal. */
function likeSignal() {
  const listeners = new Set<() => void>()
  const s = {
    aborted: false,
    reason: undefined as unknown,
    addEventListener: (_: 'abort', l: () => void) => void listeners.add(l),
    removeEventListener: (_: 'abort', l: () => void) => void listeners.delete(l),
    abort(reason: unknown) {
      s.aborted = true
      s.reason = reason
      for (const l of listeners) l()
    },
    listeners,
  }
  return s
}

describe('signals shaped like AbortSignal', () => {
  it('cancels a wait, and an aborted one cancels before waiting', async () => {
    await using locks = new FileLockProvider({ directory: tempDir('like-signal') })
    const held = await locks.createLock('sig').acquire()
    const signal = likeSignal()
    const waiting = locks.createLock('sig').acquire({ signal })
    setTimeout(() => signal.abort('stop'), 50)
    const err = await thrown(() => waiting)
    expect(err).toBeInstanceOf(AbortError)
    expect(err.cause).toBe('stop')
    expect(signal.listeners.size).toBe(0)
    expect((await thrown(() => locks.createLock('sig').acquire({ signal }))).name).toBe('AbortError')
    await held.release()
    const h = await locks.createLock('sig').acquire({ signal: likeSignal(), timeoutMs: 1_000 })
    await h.release()
    // Not signal-shaped: a type error.
    const bad = await thrown(() => locks.createLock('sig').acquire({ signal: { aborted: false } as never }))
    expect(bad.code).toBe('ERR_INVALID_ARG_TYPE')
  })
})

describe('name length', () => {
  it('names up to 1024 UTF-8 bytes are accepted, longer ones refused with the limit named', async () => {
    await using locks = new FileLockProvider({ directory: tempDir('names') })
    const h = await locks.createLock('n'.repeat(1024)).acquire()
    await h.release()
    // 342 × 3 bytes = 1026 bytes in 342 characters.
    for (const name of ['n'.repeat(1025), '漢'.repeat(342)]) {
      let err: (Error & { code?: string }) | undefined
      try {
        locks.createLock(name)
      } catch (e) {
        err = e as Error & { code?: string }
      }
      expect(err).toBeInstanceOf(RangeError)
      expect(err!.code).toBe('ERR_INVALID_ARG_VALUE')
      expect(err!.message).toMatch(/name.*must be at most 1024 bytes in UTF-8, got 102[56] bytes/)
    }
  })
})

describe('what a handle shows', () => {
  it('util.inspect shows backend, kind, token, state and lease; leaseRemainingMs needs no round trip', async () => {
    await using file = new FileLockProvider({ directory: tempDir('inspect') })
    const h = await file.createReaderWriterLock('shown').acquireRead()
    const shown = inspect(h)
    expect(shown).toMatch(/^LockHandle \{/)
    expect(shown).toContain("name: 'shown'")
    expect(shown).toContain("backend: 'file'")
    expect(shown).toContain("kind: 'read'")
    expect(shown).toContain(`fencingToken: ${h.fencingToken}n`)
    expect(shown).toContain("state: 'held'")
    expect(shown).not.toContain('leaseRemainingMs')
    expect(h.leaseRemainingMs).toBeNull()
    await h.release()
    expect(inspect(h)).toContain("state: 'released'")

    await using r = new RedisLockProvider({ urls: redis.url, leaseMs: 5_000 })
    const rh = await r.createSemaphore('shown', 2).acquire()
    const left = rh.leaseRemainingMs!
    expect(left).toBeGreaterThan(4_000)
    expect(left).toBeLessThanOrEqual(5_000)
    expect(inspect(rh)).toMatch(/kind: 'semaphore'[\s\S]*leaseRemainingMs: \d/)
    await rh.release()
    expect(rh.leaseRemainingMs).toBeNull()
  })

  it('a lost handle shows lost, its lease 0, and its message names the lock once', async () => {
    const own = await services.startRedis()
    try {
      await using r = new RedisLockProvider({ urls: own.url, leaseMs: 1_000 })
      const h = await r.createLock('lost-once').acquire()
      const raw = new Redis(own.url)
      await raw.flushall()
      raw.disconnect()
      await new Promise((resolve) => h.signal.addEventListener('abort', resolve, { once: true }))
      expect(inspect(h)).toContain("state: 'lost'")
      expect(h.leaseRemainingMs).toBe(0)
      const message = (h.signal.reason as Error).message
      expect(message.split('lost-once').length - 1).toBe(1)
      expect(message).toMatch(/^redis lock "lost-once" was lost: /)
      await h.release()
    } finally {
      own.stop()
    }
  })
})

describe('diagnostics_channel', () => {
  it('traces acquire, release and extend with name, backend, kind, wait, outcome and token; lost is published', async () => {
    const dc = await import('node:diagnostics_channel')
    const { channels } = await import('distlock')
    expect(channels).toEqual({
      acquire: 'distlock:acquire',
      release: 'distlock:release',
      extend: 'distlock:extend',
      lost: 'distlock:lost',
    })
    const seen: [string, Record<string, unknown>][] = []
    const handlers = (op: string) => ({
      start: (ctx: object) => seen.push([`${op}:start`, { ...ctx }]),
      asyncEnd: (ctx: object) => seen.push([`${op}:asyncEnd`, { ...ctx }]),
      error: (ctx: object) => seen.push([`${op}:error`, { ...ctx }]),
    })
    const subs = ['acquire', 'release', 'extend'].map(
      (op) => [dc.tracingChannel(`distlock:${op}`), handlers(op)] as const,
    )
    for (const [tc, h] of subs) tc.subscribe(h as never)
    const lost: Record<string, unknown>[] = []
    const onLost = (m: unknown) => lost.push(m as Record<string, unknown>)
    dc.subscribe('distlock:lost', onLost)
    const own = await services.startRedis()
    try {
      await using locks = new RedisLockProvider({ urls: own.url, leaseMs: 1_000 })
      const h = await locks.createLock('traced').acquire({ timeoutMs: 500 })
      expect(await locks.createLock('traced').tryAcquire()).toBeNull()
      await expect(locks.createLock('traced').acquire({ timeoutMs: 60 })).rejects.toThrow('Timed out')
      await h.extend(2_000)
      await h.release()
      // asyncEnd comes for every outcome; a rejection publishes error just before it.
      const ends = seen.filter(([what]) => what === 'acquire:asyncEnd').map(([, c]) => c)
      expect(seen.filter(([what]) => what === 'acquire:error').map(([, c]) => c.outcome)).toEqual(['timeout'])
      expect(ends.map((c) => c.outcome)).toEqual(['granted', 'busy', 'timeout'])
      expect(ends[0]).toMatchObject({
        name: 'traced',
        backend: 'redis',
        kind: 'mutex',
        timeoutMs: 500,
        tryOnly: false,
        fencingToken: h.fencingToken,
      })
      expect(ends[1]).toMatchObject({ tryOnly: true, timeoutMs: 0 })
      expect(ends[2]!.waitMs as number).toBeGreaterThanOrEqual(55)
      expect(ends[2]!.error).toBeInstanceOf(Error)
      expect(seen.find(([w]) => w === 'extend:asyncEnd')?.[1]).toMatchObject({ name: 'traced', ms: 2_000 })
      const release = seen.find(([w]) => w === 'release:asyncEnd')?.[1]
      expect(release).toMatchObject({ name: 'traced', fencingToken: h.fencingToken, wasLost: false })
      expect(release!.holdMs as number).toBeGreaterThan(0)
      // A lock found lost is published, with its reason.
      const gone = await locks.createLock('traced-lost').acquire()
      const raw = new Redis(own.url)
      await raw.flushall()
      raw.disconnect()
      await new Promise((resolve) => gone.signal.addEventListener('abort', resolve, { once: true }))
      await eventually(() => lost.length > 0)
      expect(lost[0]).toMatchObject({
        name: 'traced-lost',
        backend: 'redis',
        kind: 'mutex',
        fencingToken: gone.fencingToken,
      })
      expect(lost[0]!.reason).toEqual(expect.any(String))
      await gone.release()
    } finally {
      for (const [tc, h] of subs) tc.unsubscribe(h as never)
      dc.unsubscribe('distlock:lost', onLost)
      own.stop()
    }
  })

  it('publishes nothing and builds no context while nobody subscribes', async () => {
    const dc = await import('node:diagnostics_channel')
    expect(dc.tracingChannel('distlock:acquire').hasSubscribers).toBe(false)
    await using locks = new MemoryLockProvider()
    // A subscriber added after the handle was made sees nothing of it (no watcher was set up).
    const h = await locks.createLock('quiet').acquire()
    const lost: unknown[] = []
    const onLost = (m: unknown) => lost.push(m)
    dc.subscribe('distlock:lost', onLost)
    await locks.close() // closing loses held locks
    await new Promise((r) => setTimeout(r, 50))
    expect(h.isHeld).toBe(false)
    expect(lost).toEqual([])
    dc.unsubscribe('distlock:lost', onLost)
  })
})
