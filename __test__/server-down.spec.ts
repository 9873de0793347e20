// What a server that goes away does to each call, backend by backend: the cells of the README's
// "When a server is down" table. Each provider talks to its real server through a fault proxy
// (lab/proxy.mjs) that either resets every connection (the server is down: refused, restarted,
// its host gone) or passes nothing while keeping connections open (a partition: the server is
// silent). Every cell is a bound the README states, checked on the real server.
import * as dc from 'node:diagnostics_channel'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import {
  EtcdLockProvider,
  LockBackendError,
  MySqlLockProvider,
  PostgresLockProvider,
  RedisLockProvider,
  type Handle,
  type LockProvider,
  type StallMessage,
} from 'distlock'

import { timed } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
type Proxy = Awaited<ReturnType<Services['startProxy']>>
let services: Services

beforeAll(async () => {
  services = await import('../lab/index.mjs')
})
afterAll(() => services.stopServices())

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** The bound every call the server cannot answer settles by, on these providers (their opTimeoutMs). */
const OP_MS = 1_000
/** What a bound may be overrun by on a loaded machine (2 cores running the whole suite). */
const SLACK_MS = 1_000
/** The SQL backends' connect bound here, above OP_MS: a try's bound counts connecting in (README). */
const CONNECT_MS = 3 * OP_MS
/** The lease of Redis and etcd locks here: a lock that cannot be renewed is lost at its end. */
const LEASE_MS = 3_000

interface Subject {
  backend: 'postgres' | 'mysql' | 'redis' | 'etcd'
  /** The real server's port (started when the backend needs its own). */
  upstream(): Promise<number>
  /** A provider on 127.0.0.1:`port` (the proxy) with short timeouts. */
  provider(port: number): LockProvider
  /** When a held lock is found lost, from the fault on: the session's end (the SQL backends see a reset at once and a silent server at their keepalive probe), or the lease's. */
  lostWithinMs: { reset: number; blackhole: number }
  /** What `release()` of a held lock does while the server cannot be reached. */
  release: 'resolves' | 'rejects'
}

const subjects: Subject[] = [
  {
    backend: 'postgres',
    upstream: async () => services.urlPort((await services.findPostgres()).url),
    provider: (port) =>
      new PostgresLockProvider({
        connectionString: `postgres://postgres@127.0.0.1:${port}/postgres`,
        opTimeoutMs: OP_MS,
        connectTimeoutMs: CONNECT_MS,
        keepaliveMs: 500,
      }),
    lostWithinMs: { reset: 500, blackhole: 500 + OP_MS },
    release: 'resolves',
  },
  {
    backend: 'mysql',
    upstream: async () => (await services.findMysql()).port,
    // prefer_socket=false: the driver would otherwise move to the server's unix socket, past the proxy.
    provider: (port) =>
      new MySqlLockProvider({
        connectionString: `mysql://root@127.0.0.1:${port}/test?prefer_socket=false`,
        opTimeoutMs: OP_MS,
        connectTimeoutMs: CONNECT_MS,
        keepaliveMs: 500,
      }),
    lostWithinMs: { reset: 500, blackhole: 500 + OP_MS },
    release: 'resolves',
  },
  {
    backend: 'redis',
    upstream: async () => (await services.startRedis()).port,
    provider: (port) =>
      new RedisLockProvider({ urls: `redis://127.0.0.1:${port}`, serverTimeoutMs: OP_MS, leaseMs: LEASE_MS }),
    lostWithinMs: { reset: LEASE_MS, blackhole: LEASE_MS },
    release: 'rejects',
  },
  {
    backend: 'etcd',
    upstream: async () => Number(new URL((await services.startEtcd()).endpoint).port),
    provider: (port) =>
      new EtcdLockProvider({ endpoints: `http://127.0.0.1:${port}`, opTimeoutMs: OP_MS, leaseMs: LEASE_MS }),
    lostWithinMs: { reset: LEASE_MS, blackhole: LEASE_MS },
    release: 'resolves',
  },
]

/** Resolves with the ms from `since` when `h` is found lost, or `undefined` after `ms`. */
async function lostWithin(h: Handle, since: number, ms: number): Promise<number | undefined> {
  if (!h.signal.aborted) {
    await Promise.race([new Promise((r) => h.signal.addEventListener('abort', r, { once: true })), sleep(ms)])
  }
  return h.signal.aborted ? performance.now() - since : undefined
}

function expectBackendError(r: { error?: unknown }, what: string) {
  expect(r.error, what).toBeInstanceOf(LockBackendError)
  const message = (r.error as Error).message
  expect(message, `${what}: no Rust Debug text`).not.toMatch(/Custom \{|Os \{|kind: /)
}

const upstreams = new Map<string, number>()

describe.each(subjects)('$backend, when its server goes away', (s) => {
  let proxy: Proxy
  beforeAll(async () => {
    if (!upstreams.has(s.backend)) upstreams.set(s.backend, await s.upstream())
  }, 120_000)

  for (const mode of ['reset', 'blackhole'] as const) {
    const fault = mode === 'reset' ? 'down (every connection reset)' : 'silent (a partition)'
    it(`server ${fault}: acquire, tryAcquire, a held lock, release and close each settle by their bound`, async () => {
      proxy = await services.startProxy(upstreams.get(s.backend)!)
      const provider = s.provider(proxy.port)
      const tag = `down-${mode}-${process.pid}-${Date.now()}`
      try {
        const kept = await provider.createLock(`${tag}-kept`).acquire({ timeoutMs: 5_000 })
        const released = await provider.createLock(`${tag}-released`).acquire({ timeoutMs: 5_000 })
        const stalls: StallMessage[] = []
        const onStall = (m: unknown) => {
          if ((m as StallMessage).lock.includes(`${tag}-forever`)) stalls.push(m as StallMessage)
        }
        dc.subscribe('distlock:stall', onStall)
        const forever = new AbortController()
        const waitingForever = timed(provider.createLock(`${tag}-forever`).acquire({ signal: forever.signal }))

        proxy.setMode(mode)
        const t0 = performance.now()
        const [acquire, tryAcquire, lostAfter, release] = await Promise.all([
          timed(provider.createLock(`${tag}-acquire`).acquire({ timeoutMs: 1_000 })),
          timed(provider.createLock(`${tag}-try`).tryAcquire()),
          lostWithin(kept, t0, s.lostWithinMs[mode] + SLACK_MS),
          timed(released.release()),
        ])

        // acquire with a timeout: rides out the trouble, then says the server could not be reached.
        expectBackendError(acquire, 'acquire({ timeoutMs: 1000 })')
        expect((acquire.error as Error).message).toContain('ran out after')
        expect(acquire.ms).toBeGreaterThanOrEqual(990)
        expect(acquire.ms).toBeLessThan(1_000 + SLACK_MS)
        // tryAcquire: one attempt (and the backend's one retry), bounded by the operation timeout.
        expectBackendError(tryAcquire, 'tryAcquire()')
        expect(tryAcquire.ms).toBeLessThan(OP_MS + SLACK_MS)
        // ... connecting included: a provider with no session yet (its connect bound is longer).
        const fresh = s.provider(proxy.port)
        const freshTry = await timed(fresh.createLock(`${tag}-fresh`).tryAcquire())
        await fresh.close()
        expectBackendError(freshTry, 'tryAcquire() on a new provider')
        expect(freshTry.ms).toBeLessThan(OP_MS + SLACK_MS)
        // A held lock: lost by the session's end or the lease's, never later.
        expect(lostAfter, `${s.backend}: the held lock found lost`).toBeDefined()
        expect(kept.isHeld).toBe(false)
        // release of a held lock: settles by the operation timeout.
        expect(release.ms).toBeLessThan(OP_MS + SLACK_MS)
        if (s.release === 'rejects') expectBackendError(release, 'release()')
        else expect(release.error).toBeUndefined()

        // acquire with no timeout: waits on, and says so after 5 s of trouble (reset only: the
        // same rule, and one 5 s wait per backend is enough).
        if (mode === 'reset') {
          const by = 5_000 + 5 * OP_MS + SLACK_MS
          while (stalls.length === 0 && performance.now() - t0 < by) await sleep(50)
          expect(stalls.length, 'a distlock:stall message').toBeGreaterThan(0)
          expect(stalls[0]).toMatchObject({ backend: s.backend, lock: `${s.backend} lock "${tag}-forever"` })
          expect(stalls[0]!.waitedMs).toBeGreaterThanOrEqual(5_000)
          expect(stalls[0]!.detail.length).toBeGreaterThan(0)
        }
        forever.abort()
        const ended = await waitingForever
        expect((ended.error as Error | undefined)?.name).toBe('AbortError')
        dc.unsubscribe('distlock:stall', onStall)

        // close: settles by the operation timeout, whatever the server does.
        const close = await timed(provider.close())
        expect(close.error).toBeUndefined()
        expect(close.ms).toBeLessThan(OP_MS + SLACK_MS)
      } finally {
        await provider.close()
        await proxy.close()
      }
    }, 60_000)
  }
})
