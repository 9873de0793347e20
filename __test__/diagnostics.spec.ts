// distlock's diagnostics channels: the traced acquire, release and extend with their context,
// lost locks, Redis renewal failures, disconnects and reconnects, a PostgreSQL session lost and
// the next one, and that nothing is published or built while nobody subscribes.
import Redis from 'ioredis'
import { describe, expect, it, onTestFinished } from 'vitest'
import { MemoryLockProvider, PostgresLockProvider, RedisLockProvider } from 'distlock'

import { aborted, eventually, useLab } from './helpers'
import { messageCheck } from './setup/messages'

const lab = useLab()

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
    const own = await lab.services.startRedis()
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
    const own = await lab.services.startRedis()
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
    const { url } = await lab.services.findPostgres()
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
