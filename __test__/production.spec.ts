/**
 * What users meet on a bad day: strict options, errors that keep their cause, state errors,
 * signal-shaped objects, name limits and what a handle shows. Through the public package.
 */
import { join } from 'node:path'
import { inspect } from 'node:util'
import Redis from 'ioredis'
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest'
import {
  AbortError,
  FileDistributedLock,
  FileLockProvider,
  LockBackendError,
  LockStateError,
  LockLostError,
  MemoryDistributedLock,
  MemoryLockProvider,
  PostgresDistributedLock,
  PostgresLockProvider,
  RedisDistributedLock,
  RedisLockProvider,
  SuppressedError,
  type LockProvider,
} from 'distlock'

import { aborted, eventually, silentServer, tempDir } from './helpers'
import { messageCheck } from './setup/messages'
import type { RedisServer } from '../lab/index.mjs' with { 'resolution-mode': 'import' }

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

let services: Services
let redis: RedisServer

beforeAll(async () => {
  services = await import('../lab/index.mjs')
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
      () => locks.createLock('typo').acquire({ retryCount: 3 } as never),
    ]) {
      const e = await thrown(call)
      expect(e.code).toBe('ERR_INVALID_ARG_VALUE')
      expect(e.message).toMatch(/unknown property "\w+"\. Did you mean "(timeoutMs|leaseMs)"\?$/)
    }
    // Far from every known key: the message lists them instead.
    const far = await thrown(() => locks.createLock('typo').acquire({ priority: 1 } as never))
    expect(far.message).toBe(
      'The "options" argument has an unknown property "priority". Known properties: "timeoutMs", "signal", "leaseMs", "autoRenew", "maxHoldMs".',
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
      // redlock's `ttl` is distlock's `leaseMs`, though `tls` is one letter away.
      [() => new RedisLockProvider({ urls: 'redis://127.0.0.1:1', ttl: 500 } as never), 'ttl', 'leaseMs'],
      [
        () => new RedisLockProvider({ urls: 'redis://127.0.0.1:1', lockTimeout: 500 } as never),
        'lockTimeout',
        'leaseMs',
      ],
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

  it('extend after the lease ran out names the lock once', async () => {
    await using locks = new RedisLockProvider({ urls: redis.url })
    const h = await locks.createLock('lease').acquire({ leaseMs: 150, autoRenew: false })
    await aborted(h.signal)
    const err = await thrown(() => h.extend(1_000))
    expect(err).toBeInstanceOf(LockLostError)
    // It read `redis lock "redis lock \"lease\"" was lost` before.
    expect(err.message).toMatch(/^redis lock "lease" was lost: /)
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
      await aborted(h.signal)
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
      renewalFailure: 'distlock:renewal-failure',
      disconnect: 'distlock:disconnect',
      reconnect: 'distlock:reconnect',
      stall: 'distlock:stall',
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
      await aborted(gone.signal)
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

  it('publishes renewal failures, disconnects and reconnects (Redis)', async () => {
    const dc = await import('node:diagnostics_channel')
    const seen: [string, Record<string, unknown>][] = []
    const subs = ['renewal-failure', 'disconnect', 'reconnect'].map((what) => {
      const fn = (m: unknown) => seen.push([what, m as Record<string, unknown>])
      dc.subscribe(`distlock:${what}`, fn)
      return [what, fn] as const
    })
    const own = await services.startRedis()
    try {
      await using r = new RedisLockProvider({ urls: own.url, leaseMs: 3_000, serverTimeoutMs: 200 })
      const h = await r.createLock('observed').acquire()
      // A stalled server: the renewal (every 1 s) gets no answer within 200 ms.
      own.pause()
      await eventually(() => seen.some(([w]) => w === 'renewal-failure'), 3_000)
      own.resume()
      const failure = seen.find(([w]) => w === 'renewal-failure')![1]
      expect(failure).toMatchObject({ backend: 'redis', name: 'observed' })
      expect(failure.detail).toMatch(/no quorum of servers answered a renewal; tried again in \d+ ms/)
      // The server drops every client connection: it is gone, then back.
      const raw = new Redis(own.url)
      await raw.client('KILL', 'TYPE', 'normal')
      raw.disconnect()
      await eventually(() => seen.some(([w]) => w === 'reconnect'), 5_000)
      expect(seen.find(([w]) => w === 'disconnect')![1]).toEqual({ backend: 'redis', server: `127.0.0.1:${own.port}` })
      expect(seen.find(([w]) => w === 'reconnect')![1]).toEqual({ backend: 'redis', server: `127.0.0.1:${own.port}` })
      await eventually(() => h.isHeld, 5_000) // confirmed after the reconnect
      // A release whose connection the server just dropped goes again on the new one.
      const k = await r.createLock('observed-2').acquire()
      const killer = new Redis(own.url)
      await killer.client('KILL', 'TYPE', 'normal')
      killer.disconnect()
      await k.release()
      await h.release()
    } finally {
      own.resume()
      own.stop()
      for (const [what, fn] of subs) dc.unsubscribe(`distlock:${what}`, fn)
    }
  })

  it('publishes a PostgreSQL session lost with its locks, and the next session as a reconnect', async () => {
    const dc = await import('node:diagnostics_channel')
    const { default: pg } = await import('pg')
    const seen: [string, unknown][] = []
    const subs = ['disconnect', 'reconnect'].map((what) => {
      const fn = (m: unknown) => seen.push([what, m])
      dc.subscribe(`distlock:${what}`, fn)
      return [what, fn] as const
    })
    const { url } = await services.findPostgres()
    const u = new URL(url)
    const app = `distlock-events-${process.pid}`
    u.searchParams.set('application_name', app)
    const admin = new pg.Client({ connectionString: url })
    await admin.connect()
    try {
      await using p = new PostgresLockProvider({ connectionString: u.toString() })
      const h = await p.createLock('pg-observed').acquire()
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app])
      await aborted(h.signal)
      await eventually(() => seen.some(([w]) => w === 'disconnect'))
      const again = await p.createLock('pg-observed').acquire({ timeoutMs: 5_000 })
      await eventually(() => seen.some(([w]) => w === 'reconnect'))
      const server = `${u.hostname}:${u.port || 5432}${u.pathname}`
      expect(seen).toEqual([
        ['disconnect', { backend: 'postgres', server }],
        ['reconnect', { backend: 'postgres', server }],
      ])
      await again.release()
      await h.release()
    } finally {
      await admin.end()
      for (const [what, fn] of subs) dc.unsubscribe(`distlock:${what}`, fn)
    }
  })

  it('publishes nothing and builds no context while nobody subscribes', async () => {
    const dc = await import('node:diagnostics_channel')
    messageCheck.pause()
    onTestFinished(() => messageCheck.resume())
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

describe('leaked handles', () => {
  it('a handle garbage-collected while held emits a warning naming the lock, and frees it', async () => {
    const { execFileSync } = await import('node:child_process')
    const dir = tempDir('leak')
    const script = `
      const { FileLockProvider } = require('distlock')
      const locks = new FileLockProvider({ directory: ${JSON.stringify(dir)} })
      const warnings = []
      process.on('warning', (w) => warnings.push(w))
      async function leak() { await locks.createLock('leaky').acquire() } // never released
      async function tidy() { const h = await locks.createLock('tidy').acquire(); await h.release() }
      ;(async () => {
        await leak()
        await tidy()
        for (let i = 0; i < 50 && warnings.length === 0; i++) {
          globalThis.gc()
          await new Promise((r) => setTimeout(r, 20))
        }
        const again = await locks.createLock('leaky').acquire({ timeoutMs: 2000 })
        await again.release()
        console.log(JSON.stringify(warnings.map((w) => [w.name, w.code, w.message])))
        await locks.close()
      })()
    `
    const out = execFileSync(process.execPath, ['--expose-gc', '-e', script], {
      cwd: join(__dirname, '..'),
      encoding: 'utf8',
      timeout: 20_000,
    })
    const warnings = JSON.parse(out) as [string, string, string][]
    expect(warnings).toHaveLength(1)
    expect(warnings[0]![0]).toBe('DistlockWarning')
    expect(warnings[0]![1]).toBe('DISTLOCK_LEAKED_HANDLE')
    expect(warnings[0]![2]).toMatch(/^file lock "leaky" was released by garbage collection, not by release\(\)/)
  })
})

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
    const own = await services.startRedis()
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

describe('PostgreSQL connectTimeoutMs', () => {
  it('bounds a login that never answers, separately from opTimeoutMs', async () => {
    // Accepts connections and never says a word: the login hangs.
    await using silent = await silentServer()
    const { port } = silent
    // A block of its own: the provider closes before the server does.
    {
      await using pg = new PostgresLockProvider({
        connectionString: `postgres://app@127.0.0.1:${port}/app?sslmode=disable`,
        connectTimeoutMs: 300,
        opTimeoutMs: 5_000,
      })
      const started = performance.now()
      const err = await thrown(() => pg.createLock('login').tryAcquire())
      const took = performance.now() - started
      expect(err).toBeInstanceOf(LockBackendError)
      expect(err.message).toContain('no answer to the login within 300 ms')
      expect(took).toBeGreaterThanOrEqual(290)
      expect(took).toBeLessThan(2_000)
      expect(() => new PostgresLockProvider({ connectionString: 'postgres://a@h/db', connectTimeoutMs: -1 })).toThrow(
        /connectTimeoutMs/,
      )
    }
  })
})

/** A child that takes, tries and releases a file lock. */
const debugScript = (dir: string) => `
  const { FileLockProvider } = require('distlock')
  ;(async () => {
    const locks = new FileLockProvider({ directory: ${JSON.stringify(dir)} })
    const h = await locks.createLock('logged').acquire()
    await locks.createLock('logged').tryAcquire()
    await h.release()
    await locks.close()
    await new Promise((r) => setTimeout(r, 50)) // the backends' lines arrive through the loop
  })()
`

/** Runs that child with `env`; returns its stderr. */
const run = async (env: Record<string, string>) => {
  const { spawnSync } = await import('node:child_process')
  const res = spawnSync(process.execPath, ['-e', debugScript(tempDir('debuglog'))], {
    cwd: join(__dirname, '..'),
    encoding: 'utf8',
    timeout: 20_000,
    env: { ...process.env, NODE_DEBUG: '', DISTLOCK_LOG_LEVEL: '', ...env },
  })
  expect(res.status, res.stderr).toBe(0)
  return res.stderr
}

describe('NODE_DEBUG=distlock', () => {
  it('logs the calls and routes the Rust backends’ events at the level asked for', async () => {
    const out = await run({ NODE_DEBUG: 'distlock' })
    const lines = out.split('\n').filter(Boolean)
    for (const line of lines) expect(line).toMatch(/^DISTLOCK \d+: /)
    expect(out).toMatch(/: acquire file mutex "logged": granted after \d+\.\d ms, token \d+$/m)
    expect(out).toMatch(/: tryAcquire file mutex "logged": busy after \d+\.\d ms$/m)
    expect(out).toMatch(/: release file mutex "logged", token \d+, held \d+\.\d ms$/m)
    // From the Rust side: the file backend's own debug event for the grant.
    expect(out).toMatch(/: DEBUG distlock_file\S*: acquired .*name=logged/m)

    const warnOnly = await run({ NODE_DEBUG: 'distlock', DISTLOCK_LOG_LEVEL: 'warn' })
    expect(warnOnly).toMatch(/: acquire file mutex "logged": granted/)
    expect(warnOnly).not.toMatch(/DEBUG distlock_file/)

    expect(await run({})).toBe('')
  })
})

describe('Redis TLS options', () => {
  it('trusts the ca given, presents a client certificate, and names what is wrong with bad material', async () => {
    const { readFileSync } = await import('node:fs')
    // The server checks clients: only a client with a certificate from its CA gets in.
    const tls = await services.startRedis(['--tls-auth-clients', 'yes'], { tls: true })
    try {
      const ca = readFileSync(tls.caFile!)
      await using trusted = new RedisLockProvider({
        urls: tls.url,
        tls: { ca, cert: readFileSync(tls.certFile!, 'utf8'), key: readFileSync(tls.keyFile!) },
      })
      const h = await trusted.createLock('tls-opts').acquire({ timeoutMs: 5_000 })
      expect(h.isHeld).toBe(true)
      await h.release()

      // Without a client certificate the server refuses the handshake: a backend error, at once.
      await using anonymous = new RedisLockProvider({ urls: tls.url, tls: { ca }, serverTimeoutMs: 1_000 })
      expect(await thrown(() => anonymous.createLock('tls-opts').acquire({ timeoutMs: 2_000 }))).toBeInstanceOf(
        LockBackendError,
      )

      for (const [tlsOption, message] of [
        [{ ca: 'not a certificate' }, /tls.*ca holds no PEM certificate/],
        [{ ca, cert: readFileSync(tls.certFile!) }, /tls.*cert and key must be given together/],
        [{ ca, cert: 'x', key: 'y' }, /tls.*cert holds no PEM certificate/],
      ] as const) {
        expect(() => new RedisLockProvider({ urls: tls.url, tls: tlsOption })).toThrow(message)
      }
      expect(() => new RedisLockProvider({ urls: redis.url, tls: { ca } })).toThrow(/no URL is rediss:\/\//)
      expect(() => new RedisLockProvider({ urls: tls.url, tls: { cafile: 'x' } as never })).toThrow(
        'The "options.tls" argument has an unknown property "cafile". Did you mean "ca"?',
      )
    } finally {
      tls.stop()
    }
  })
})

/** Runs a child that takes the Redis lock `name` and then does `then`; returns how it ended. */
async function exitChild(name: string, providerOptions: string, then: string) {
  const { spawnSync } = await import('node:child_process')
  const script = `
    const { RedisLockProvider } = require('distlock')
    const locks = new RedisLockProvider({ urls: ${JSON.stringify(redis.url)}, ${providerOptions} })
    ;(async () => {
      // Kept, as a holder keeps its handle (a handle collected early is released by the GC).
      globalThis.held = await locks.createLock(${JSON.stringify(name)}).acquire()
      ${then}
    })()
  `
  return spawnSync(process.execPath, ['-e', script], {
    cwd: join(__dirname, '..'),
    encoding: 'utf8',
    timeout: 20_000,
  })
}
const redisHas = async (name: string) => {
  const raw = new Redis(redis.url)
  try {
    return await raw.exists(name)
  } finally {
    raw.disconnect()
  }
}

describe('releaseOnExit', () => {
  it('releases on SIGTERM and SIGINT, and the process still dies of the signal', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const name = `exit-${signal}`
      // A process with work going on (a server, say), as one that gets a signal usually is.
      const res = await exitChild(
        name,
        'releaseOnExit: true',
        `setInterval(() => {}, 1000); process.kill(process.pid, '${signal}')`,
      )
      expect(res.signal, res.stderr).toBe(signal)
      expect(await redisHas(name)).toBe(0)
    }
  })

  it('releases when the script ends without releasing; without the option the key stays', async () => {
    const res = await exitChild('exit-end', 'releaseOnExit: true', "console.log('done')")
    expect(res.status, res.stderr).toBe(0)
    expect(res.stdout).toBe('done\n')
    expect(await redisHas('exit-end')).toBe(0)

    const kept = await exitChild('exit-kept', 'leaseMs: 30000', "console.log('done')")
    expect(kept.status, kept.stderr).toBe(0)
    expect(await redisHas('exit-kept')).toBe(1)
    const killed = await exitChild('exit-killed', 'leaseMs: 30000', "process.kill(process.pid, 'SIGTERM')")
    expect(killed.signal).toBe('SIGTERM')
    expect(await redisHas('exit-killed')).toBe(1)
  })

  it('a listener of the application decides what a signal does', async () => {
    const res = await exitChild(
      'exit-own-listener',
      'releaseOnExit: true',
      `process.on('SIGTERM', () => setTimeout(() => { console.log('own handler'); process.exit(3) }, 300))
       process.kill(process.pid, 'SIGTERM')`,
    )
    expect(res.status).toBe(3)
    expect(res.stdout).toBe('own handler\n')
    expect(await redisHas('exit-own-listener')).toBe(0)
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
    const { findPostgres } = services
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
    const locked = await services.startRedis(['--requirepass', 'right'])
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
    expect(frames[0]).toMatch(/at (async )?callerOfAcquire \(.*production\.spec\.ts:\d+:\d+\)/)
    expect(frames.some((l) => l.includes(`${join(__dirname, '..', 'dist')}`))).toBe(false)
    await held.release()
  })
})

describe('the lease: autoRenew and maxHoldMs', () => {
  it('Redis with autoRenew false: the lease ends on time and the signal aborts, unless extended', async () => {
    await using r = new RedisLockProvider({ urls: redis.url, leaseMs: 400, autoRenew: false })
    const h = await r.createLock('no-renew').acquire()
    const started = performance.now()
    await aborted(h.signal)
    const took = performance.now() - started
    expect(took).toBeGreaterThan(300)
    expect(took).toBeLessThan(1_500)
    expect(h.isHeld).toBe(false)
    // Nobody renewed it: the key ends on the server too (a few ms after the local deadline,
    // which allows for clock drift), and the name is free.
    // (A renewed key would stay for good; the budget is wide for a loaded machine.)
    const next = await r.createLock('no-renew').acquire({ timeoutMs: 5_000 })
    await next.release()
    await h.release()
    // The provider renews nothing: a lock kept well past 3 periods of a 400 ms lease ends.
    expect(r.renewalStats.renewals).toBe(0)

    // extend() moves the deadline of a lock that is not renewed.
    const e = await r.createLock('no-renew-extended').acquire()
    await new Promise((resolve) => setTimeout(resolve, 250))
    await e.extend(600)
    await new Promise((resolve) => setTimeout(resolve, 300)) // 550 ms after the grant
    expect(e.isHeld).toBe(true)
    await aborted(e.signal)
    await e.release()

    // The default keeps renewing: held past several leases.
    await using renewing = new RedisLockProvider({ urls: redis.url, leaseMs: 300 })
    const k = await renewing.createLock('renewed').acquire({ autoRenew: true })
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    expect(k.isHeld).toBe(true)
    await k.release()
    // An acquire's autoRenew false wins over the provider's default.
    const once = await renewing.createLock('renewed').acquire({ autoRenew: false })
    await aborted(once.signal)
    await once.release()
  })

  it('maxHoldMs caps the hold on every backend: released, and the signal says why', async () => {
    const providers = [
      new MemoryLockProvider({ maxHoldMs: 150 }),
      new FileLockProvider({ directory: tempDir('max-hold'), maxHoldMs: 150 }),
      new RedisLockProvider({ urls: redis.url, maxHoldMs: 150 }),
    ]
    for (const provider of providers) {
      await using p = provider
      const h = await p.createLock('capped').acquire()
      const started = performance.now()
      await aborted(h.signal)
      expect(performance.now() - started).toBeGreaterThan(100)
      expect((h.signal.reason as Error).message).toMatch(
        /lock "capped" was lost: it was held for its maxHoldMs \(150 ms\)/,
      )
      await eventually(() => h.isReleased)
      expect(await p.createLock('capped').isLocked()).toBe(false)
      // An acquire's own cap wins; a released handle's timer is cleared.
      const own = await p.createLock('capped').acquire({ maxHoldMs: 5_000 })
      await own.release()
    }
    const bad = await thrown(() => new MemoryLockProvider().createLock('x').acquire({ maxHoldMs: 0 }))
    expect(bad.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(() => new RedisLockProvider({ urls: redis.url, autoRenew: 'no' } as never)).toThrow(/options\.autoRenew/)
  })
})

describe('waitForUnlock', () => {
  it('resolves once the name is free, without taking it; times out and aborts like acquire', async () => {
    for (const make of [
      () => new MemoryLockProvider(),
      () => new FileLockProvider({ directory: tempDir('wait-unlock') }),
      () => new RedisLockProvider({ urls: redis.url }),
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

/** A fresh provider of every backend, by name (Redis: the shared test server). */
const everyBackend = (): Array<[string, () => Promise<LockProvider>]> => [
  ['memory', async () => new MemoryLockProvider()],
  ['file', async () => new FileLockProvider({ directory: tempDir('permits') })],
  ['postgres', async () => new PostgresLockProvider({ connectionString: process.env.DISTLOCK_TEST_PG_URL! })],
  ['redis', async () => new RedisLockProvider({ urls: redis.url })],
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

describe('Redis removeUnusedFenceKeys', () => {
  it('removes the counters of names nobody uses, keeps the others, and tokens still only grow', async () => {
    const own = await services.startRedis()
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
    const own = await services.startRedis()
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

describe('RedLock acquireAll', () => {
  it('takes all the locks in one round per server, all or none, and waits without deadlock', async () => {
    const servers = await Promise.all([0, 1, 2].map(() => services.startRedis()))
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
