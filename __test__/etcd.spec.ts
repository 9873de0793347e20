// The etcd provider through the public API, against private etcd processes: every test starts
// its own member (or a 3-member cluster) on free loopback ports and stops it after.
import { spawnSync } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'

import {
  AbortError,
  EtcdDistributedLock,
  EtcdLockProvider,
  LockBackendError,
  LockLostError,
  LockTimeoutError,
  type EtcdLockProviderOptions,
} from 'distlock'

import { Child, eventually, tempDir } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
let services: Services
let seq = 0
const unique = (tag: string) => `${tag}-${process.pid}-${seq++}`
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Run after each test, last first: providers close before their servers stop. */
const cleanups: Array<() => unknown> = []

beforeAll(async () => {
  services = await import('../lab/index.mjs')
})

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).toReversed()) {
    try {
      await cleanup()
    } catch {
      // best effort: the next test starts its own servers
    }
  }
})

afterAll(() => services.stopServices())

async function single() {
  const server = await services.startEtcd()
  cleanups.push(() => server.stop())
  return server
}

async function cluster() {
  const c = await services.startEtcdCluster(3)
  cleanups.push(() => c.stop())
  return c
}

function provider(
  endpoints: string | string[],
  options: Omit<EtcdLockProviderOptions, 'endpoints'> = {},
): EtcdLockProvider {
  const p = new EtcdLockProvider({ endpoints, ...options })
  cleanups.push(() => p.close())
  return p
}

function scratch(tag: string): string {
  const dir = tempDir(tag)
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function child(args: string[]): Child {
  const c = new Child('etcd-child.cjs', args)
  cleanups.push(() => {
    c.kill('SIGCONT')
    c.kill('SIGKILL')
  })
  return c
}

/** The gateway's range of the keys starting with `prefix` (base64, as its JSON wants). */
function rangeOf(prefix: string): { key: string; range_end: string } {
  const end = Buffer.from(prefix)
  end[end.length - 1]! += 1
  return { key: Buffer.from(prefix).toString('base64'), range_end: end.toString('base64') }
}

/** How many keys start with `prefix`, asked over the member's HTTP gateway. */
async function countKeys(endpoint: string, prefix: string): Promise<number> {
  const res = await fetch(`${endpoint}/v3/kv/range`, {
    method: 'POST',
    body: JSON.stringify({ ...rangeOf(prefix), count_only: true }),
  })
  if (!res.ok) throw new Error(`etcd answered ${res.status} to a range request`)
  const body = (await res.json()) as { count?: string }
  return Number(body.count ?? 0)
}

/** The keys of a lock or reader-writer lock (`l`) or semaphore (`s`) under the default prefix. */
const lockKeys = (name: string) => `distlock/${name}/l`
const semaphoreKeys = (name: string) => `distlock/${name}/s`

describe('EtcdLockProvider on one member', () => {
  it('excludes between providers, tries, times out, and hands out increasing fencing tokens', async () => {
    const { endpoint } = await single()
    const a = provider(endpoint)
    const b = provider([endpoint])
    const name = unique('mutex')
    const h1 = await a.createLock(name).acquire({ timeoutMs: 5_000 })
    expect(h1.isHeld).toBe(true)
    expect(typeof h1.fencingToken).toBe('bigint')
    expect(await b.createLock(name).tryAcquire()).toBeNull()
    expect(await a.createLock(name).tryAcquire()).toBeNull()
    const start = performance.now()
    const err = await b
      .createLock(name)
      .acquire({ timeoutMs: 300 })
      .catch((e: unknown) => e)
    const waited = performance.now() - start
    expect(err).toBeInstanceOf(LockTimeoutError)
    expect(waited).toBeGreaterThanOrEqual(290)
    expect(waited).toBeLessThan(3_000)
    expect(h1.isHeld).toBe(true)
    await h1.release()
    expect(h1.isHeld).toBe(false)
    await h1.release()

    const tokens = [h1.fencingToken]
    for (let i = 0; i < 6; i++) {
      const h = await (i % 2 ? a : b).createLock(name).acquire({ timeoutMs: 2_000 })
      tokens.push(h.fencingToken)
      await h.release()
    }
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]!).toBeGreaterThan(tokens[i - 1]!)
    expect(await countKeys(endpoint, lockKeys(name))).toBe(0)
  })

  it('grants waiters from three providers in the order they queued (FIFO)', async () => {
    const { endpoint } = await single()
    const holder = provider(endpoint)
    const waiters = [provider(endpoint), provider(endpoint), provider(endpoint)]
    const name = unique('fifo')
    const h = await holder.createLock(name).acquire()
    const order: number[] = []
    const tokens: bigint[] = []
    const done: Array<Promise<void>> = []
    for (const [i, p] of waiters.entries()) {
      done.push(
        p
          .createLock(name)
          .acquire({ timeoutMs: 15_000 })
          .then(async (w) => {
            order.push(i)
            tokens.push(w.fencingToken)
            await sleep(20)
            await w.release()
          }),
      )
      // Its key is in etcd before the next one queues.
      await eventually(async () => (await countKeys(endpoint, lockKeys(name))) === i + 2, 5_000, 20)
    }
    await sleep(100)
    expect(order).toEqual([])
    await h.release()
    await Promise.all(done)
    expect(order).toEqual([0, 1, 2])
    expect(tokens[0]!).toBeGreaterThan(h.fencingToken)
    expect(tokens[1]!).toBeGreaterThan(tokens[0]!)
    expect(tokens[2]!).toBeGreaterThan(tokens[1]!)
  })

  it('an AbortSignal cancels a wait, and the cancelled key does not hold back the next waiter', async () => {
    const { endpoint } = await single()
    const [a, b, c] = [provider(endpoint), provider(endpoint), provider(endpoint)]
    const name = unique('abort')
    const h = await a.createLock(name).acquire()
    const ac = new AbortController()
    const cancelled = b
      .createLock(name)
      .acquire({ signal: ac.signal })
      .catch((e: unknown) => e)
    await eventually(async () => (await countKeys(endpoint, lockKeys(name))) === 2, 5_000, 20)
    // Queued behind the one that will be cancelled (whose provider stays open, keeping its lease).
    const next = c.createLock(name).acquire({ timeoutMs: 15_000 })
    await eventually(async () => (await countKeys(endpoint, lockKeys(name))) === 3, 5_000, 20)
    ac.abort()
    expect(await cancelled).toBeInstanceOf(AbortError)
    await eventually(async () => (await countKeys(endpoint, lockKeys(name))) === 2, 5_000, 20)
    const released = performance.now()
    await h.release()
    const h2 = await next
    expect(performance.now() - released).toBeLessThan(2_000)
    expect(h2.fencingToken).toBeGreaterThan(h.fencingToken)
    expect(await b.createLock(name).tryAcquire()).toBeNull()
    await h2.release()
    // An already-aborted signal rejects at once.
    await expect(b.createLock(name).acquire({ signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortError)
  })

  it('reader-writer lock: readers share, a writer excludes, a queued writer blocks later readers', async () => {
    const { endpoint } = await single()
    const [a, b, c, d] = [provider(endpoint), provider(endpoint), provider(endpoint), provider(endpoint)]
    const name = unique('rw')
    const r1 = await a.createReaderWriterLock(name).acquireRead({ timeoutMs: 2_000 })
    const r2 = await b.createReaderWriterLock(name).acquireRead({ timeoutMs: 2_000 })
    expect(r1.isHeld && r2.isHeld).toBe(true)
    const info = await d.createReaderWriterLock(name).getInfo()
    expect(info.held).toBe(true)
    expect(info.holders).toBe(2)
    expect(await c.createReaderWriterLock(name).tryAcquireWrite()).toBeNull()

    let writerGranted = false
    const writer = c
      .createReaderWriterLock(name)
      .acquireWrite({ timeoutMs: 15_000 })
      .then((w) => {
        writerGranted = true
        return w
      })
    await eventually(async () => (await countKeys(endpoint, lockKeys(name))) === 3, 5_000, 20)
    // A reader arriving after the queued writer waits behind it.
    expect(await d.createReaderWriterLock(name).tryAcquireRead()).toBeNull()
    await expect(d.createReaderWriterLock(name).acquireRead({ timeoutMs: 300 })).rejects.toBeInstanceOf(
      LockTimeoutError,
    )
    await r1.release()
    await sleep(200)
    expect(writerGranted).toBe(false)
    await r2.release()
    const w = await writer
    expect(w.fencingToken).toBeGreaterThan(r2.fencingToken)
    expect(await d.createReaderWriterLock(name).tryAcquireRead()).toBeNull()
    expect(await d.createReaderWriterLock(name).tryAcquireWrite()).toBeNull()
    expect(await d.createLock(name).tryAcquire()).toBeNull() // the mutex is the write side
    const reader = d.createReaderWriterLock(name).acquireRead({ timeoutMs: 15_000 })
    await w.release()
    const r3 = await reader
    await r3.release()
    expect(await countKeys(endpoint, lockKeys(name))).toBe(0)
  })

  it('semaphore: permits are counted, a wait for two permits needs two free', async () => {
    const { endpoint } = await single()
    const [a, b, c] = [provider(endpoint), provider(endpoint), provider(endpoint)]
    const name = unique('sem')
    const s1 = await a.createSemaphore(name, 3).acquire({ permits: 2, timeoutMs: 2_000 })
    let info = await c.createSemaphore(name, 3).getInfo()
    expect(info.held).toBe(false)
    expect(info.holders).toBe(2)
    const s2 = await b.createSemaphore(name, 3).acquire({ timeoutMs: 2_000 })
    info = await c.createSemaphore(name, 3).getInfo()
    expect(info.held).toBe(true)
    expect(info.holders).toBe(3)
    expect(await c.createSemaphore(name, 3).tryAcquire()).toBeNull()
    let granted = false
    const big = c
      .createSemaphore(name, 3)
      .acquire({ permits: 2, timeoutMs: 15_000 })
      .then((h) => {
        granted = true
        return h
      })
    await eventually(async () => (await countKeys(endpoint, semaphoreKeys(name))) === 3, 5_000, 20)
    await s2.release() // one permit free: not enough
    await sleep(300)
    expect(granted).toBe(false)
    await s1.release()
    const s3 = await big
    info = await a.createSemaphore(name, 3).getInfo()
    expect(info.holders).toBe(2)
    const s4 = await a.createSemaphore(name, 3).acquire({ timeoutMs: 2_000 })
    expect(await b.createSemaphore(name, 3).tryAcquire()).toBeNull()
    await Promise.all([s3.release(), s4.release()])
    expect(await countKeys(endpoint, semaphoreKeys(name))).toBe(0)
  })

  it('getInfo reports holders and the fencing token', async () => {
    const { endpoint } = await single()
    const [a, b] = [provider(endpoint), provider(endpoint)]
    const name = unique('info')
    expect(await b.createLock(name).getInfo()).toMatchObject({ held: false, holders: 0, fencingToken: null })
    const h = await a.createLock(name).acquire()
    expect(await b.createLock(name).getInfo()).toMatchObject({ held: true, holders: 1, fencingToken: h.fencingToken })
    await h.release()
    expect(await b.createLock(name).getInfo()).toMatchObject({ held: false, holders: 0 })
  })
})

describe('EtcdLockProvider across processes', () => {
  it('4 processes × 25 increments under the lock lose none, and tokens rise in grant order', async () => {
    const { endpoint } = await single()
    const dir = scratch('etcd-counter')
    const name = unique('counter')
    const kids = Array.from({ length: 4 }, () => child(['counter', endpoint, name, dir, '25']))
    for (const k of kids) expect((await k.exit(60_000)).code, k.lines.join('\n')).toBe(0)
    expect(Number(readFileSync(join(dir, 'counter.txt'), 'utf8'))).toBe(100)
    const rows = readFileSync(join(dir, 'tokens.txt'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' '))
      .map(([value, token]) => ({ value: Number(value), token: BigInt(token!) }))
      .toSorted((x, y) => x.value - y.value)
    expect(rows.map((r) => r.value)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1))
    for (let i = 1; i < rows.length; i++) expect(rows[i]!.token).toBeGreaterThan(rows[i - 1]!.token)
  }, 60_000)
})

describe('EtcdLockProvider on a 3-member cluster, with faults', () => {
  it('kill -9 of a follower: grants go on and held locks are not lost', async () => {
    const c = await cluster()
    const leader = await c.leader()
    const victim = (leader + 1) % 3
    // The dead follower first, so both providers are talking to it when it dies.
    const endpoints = [victim, ...[0, 1, 2].filter((i) => i !== victim)].map((i) => c.endpoints[i]!)
    const holder = provider(endpoints, { leaseMs: 3_000 })
    const other = provider(endpoints)
    const heldName = unique('held')
    const name = unique('cycle')
    const held = await holder.createLock(heldName).acquire({ timeoutMs: 5_000 })
    let lost: unknown
    held.signal.addEventListener('abort', () => (lost = held.signal.reason))
    await (await other.createLock(name).acquire({ timeoutMs: 5_000 })).release()

    c.members[victim]!.kill('SIGKILL')
    const killedAt = performance.now()
    let last = 0n
    for (let i = 0; i < 20; i++) {
      const h = await (i % 2 ? holder : other).createLock(name).acquire({ timeoutMs: 5_000 })
      expect(h.fencingToken).toBeGreaterThan(last)
      last = h.fencingToken
      await h.release()
    }
    expect(performance.now() - killedAt).toBeLessThan(15_000)
    // Outlive the 3 s lease: it is kept alive through the members that are left.
    await sleep(Math.max(0, 4_000 - (performance.now() - killedAt)))
    expect(lost).toBeUndefined()
    expect(held.isHeld).toBe(true)
    expect(await other.createLock(heldName).tryAcquire()).toBeNull()
    await held.release()
    const again = await other.createLock(heldName).acquire({ timeoutMs: 5_000 })
    await again.release()
  }, 30_000)

  it('kill -9 of the leader while two processes contend: no overlap, and grants go on after the election', async () => {
    const c = await cluster()
    const first = await c.leader()
    // The leader first, so both children are talking to it when it dies.
    const endpoints = [first, ...[0, 1, 2].filter((i) => i !== first)].map((i) => c.endpoints[i]!)
    const dir = scratch('etcd-contend')
    const log = join(dir, 'log.txt')
    const name = unique('contend')
    const read = () => {
      try {
        return readFileSync(log, 'utf8').trim().split('\n').filter(Boolean)
      } catch {
        return []
      }
    }
    const kids = [0, 1].map(() => child(['contend', endpoints.join(','), name, dir, '12000']))
    await eventually(() => read().filter((l) => l.startsWith('grant ')).length >= 20, 10_000, 50)
    const leader = await c.leader()
    const killedAt = Date.now()
    c.members[leader]!.kill('SIGKILL')
    for (const k of kids) {
      expect((await k.exit(30_000)).code, k.lines.join('\n')).toBe(0)
      expect(k.lines.at(-1), k.lines.join('\n')).toMatch(/^DONE \d+ \d+$/)
    }
    const lines = read()
    expect(
      lines.filter((l) => l.startsWith('overlap ')),
      lines.join('\n'),
    ).toEqual([])
    expect(
      lines.filter((l) => l.startsWith('lost ')),
      lines.join('\n'),
    ).toEqual([])
    const grants = lines
      .filter((l) => l.startsWith('grant '))
      .map((l) => l.split(' '))
      .map(([, at, pid, token]) => ({ at: Number(at), pid, token: BigInt(token!) }))
    // The log is appended to under the lock: its order is the order of the grants.
    for (let i = 1; i < grants.length; i++) expect(grants[i]!.token).toBeGreaterThan(grants[i - 1]!.token)
    const after = grants.filter((g) => g.at > killedAt)
    expect(after.length, lines.slice(-20).join('\n')).toBeGreaterThanOrEqual(5)
    // An election takes a second or two; a release caught in it may wait out opTimeoutMs (5 s).
    expect(after[0]!.at - killedAt).toBeLessThan(9_000)
    expect(new Set(grants.map((g) => g.pid)).size).toBe(2)
  }, 60_000)
})

describe('EtcdLockProvider with a paused holder', () => {
  it('a holder stopped past its 2 s lease: another gets the lock, and the holder never reports held after that', async () => {
    const { endpoint } = await single()
    const name = unique('paused')
    const holder = child(['hold', endpoint, name, '', '0', '2000'])
    const holding = await holder.line('HOLDING')
    const holderToken = BigInt(holding.split(' ')[1]!)
    await holder.line('held ')
    const p = provider(endpoint)
    expect(await p.createLock(name).tryAcquire()).toBeNull()

    holder.kill('SIGSTOP')
    const stoppedAt = Date.now()
    const h = await p.createLock(name).acquire({ timeoutMs: 10_000 })
    const grantedAt = Date.now()
    // The server let the lease run out: no sooner than the keep-alive interval (TTL/3) allows.
    expect(grantedAt - stoppedAt).toBeGreaterThanOrEqual(1_000)
    expect(h.fencingToken).toBeGreaterThan(holderToken)
    await sleep(200)
    holder.kill('SIGCONT')
    const resumedAt = Date.now()

    const lost = await holder.line('lost ', 5_000)
    expect(lost).toMatch(/LockLostError/)
    expect(Number(lost.split(' ')[1]) - resumedAt).toBeLessThan(2_000)
    await holder.line('RELEASED', 5_000)
    const heldLines = () =>
      holder.lines
        .filter((l) => l.startsWith('held '))
        .map((l) => l.split(' '))
        .map(([, before, held, after]) => ({ before: Number(before), held: held === 'true', after: Number(after) }))
    // The child is stopped from stoppedAt until SIGCONT, so a line with before >= grantedAt
    // was written after it resumed.
    await eventually(() => heldLines().filter((l) => l.before >= grantedAt).length >= 3, 5_000, 20)
    const lines = heldLines()
    // isHeld was true before the pause…
    expect(lines.some((l) => l.held && l.after <= stoppedAt)).toBe(true)
    // …and never once the other holder had the lock: the first look after SIGCONT, before any
    // other work, already says false (the local deadline passed while the process was stopped).
    // `before` is taken ahead of isHeld, so a true with before >= grantedAt means isHeld said
    // true after the lock was granted to someone else.
    const wrong = lines.filter((l) => l.held && l.before >= grantedAt)
    expect(wrong, holder.lines.join('\n')).toEqual([])
    expect(lines.filter((l) => l.before >= grantedAt).length).toBeGreaterThanOrEqual(3)

    // The holder's release after the loss does not touch the new holder's key.
    expect(h.isHeld).toBe(true)
    expect(h.signal.aborted).toBe(false)
    expect(await provider(endpoint).createLock(name).tryAcquire()).toBeNull()
    await h.release()
    expect(holder.proc.exitCode).toBeNull()
  }, 30_000)

  it('handle.signal aborts with LockLostError when the lock key is deleted behind its back', async () => {
    const { endpoint } = await single()
    const p = provider(endpoint, { leaseMs: 2_000 })
    const name = unique('deleted')
    const h = await p.createLock(name).acquire()
    const reason = new Promise<unknown>((resolve) =>
      h.signal.addEventListener('abort', () => resolve(h.signal.reason), { once: true }),
    )
    // Delete every key of the lock over the gateway.
    const res = await fetch(`${endpoint}/v3/kv/deleterange`, {
      method: 'POST',
      body: JSON.stringify(rangeOf(lockKeys(name))),
    })
    expect(res.ok).toBe(true)
    const timer = sleep(5_000).then(() => 'timed out')
    expect(await Promise.race([reason, timer])).toBeInstanceOf(LockLostError)
    expect(h.isHeld).toBe(false)
    await h.release()
  })
})

describe('EtcdDistributedLock (keyed)', () => {
  it('acquire, tryAcquire, isLocked, extend within the lease, release; the CLI holds the lock', async () => {
    const { endpoint } = await single()
    const a = new EtcdDistributedLock({ endpoints: endpoint, ttlMs: 4_000 })
    const b = new EtcdDistributedLock({ endpoints: [endpoint], retryIntervalMs: 100, maxRetries: 3 })
    cleanups.push(
      () => a.close(),
      () => b.close(),
    )
    const k = unique('keyed')
    const guard = await a.acquire(k)
    expect(await a.isLocked(k)).toBe(true)
    expect(await b.tryAcquire(k)).toBeNull()
    await a.extend(guard, 3_000)
    // etcd cannot lengthen a lease past its TTL.
    await expect(a.extend(guard, 60_000)).rejects.toThrow(RangeError)
    const err = await b.acquire(k).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockTimeoutError)
    await guard.release()
    expect(await a.isLocked(k)).toBe(false)
    // distlock run --etcd: the command runs under the lock, which is free again afterwards.
    const cli = join(__dirname, '..', 'bin', 'distlock.js')
    const run = spawnSync(
      process.execPath,
      [
        cli,
        'run',
        k,
        '--etcd',
        endpoint,
        '--',
        process.execPath,
        '-e',
        'console.log(process.env.DISTLOCK_FENCING_TOKEN)',
      ],
      { encoding: 'utf8', timeout: 20_000 },
    )
    expect(run.status, run.stderr).toBe(0)
    expect(BigInt(run.stdout.trim()) > guard.fencingToken).toBe(true)
    const g2 = await b.tryAcquire(k)
    expect(g2).not.toBeNull()
    await g2!.release()
  })
})

describe('EtcdLockProvider bad input', () => {
  it('rejects bad options with errors that name them', () => {
    const ep = 'http://127.0.0.1:2379'
    const cases: Array<[unknown, ErrorConstructor, RegExp]> = [
      [undefined, TypeError, /"options" argument/],
      [{}, TypeError, /options\.endpoints/],
      [{ endpoints: 2379 }, TypeError, /options\.endpoints/],
      [{ endpoints: [2379] }, TypeError, /options\.endpoints/],
      [{ endpoints: [] }, RangeError, /^endpoints must list at least one etcd endpoint/],
      [{ endpoints: 'nonsense://' }, RangeError, /^endpoints has "nonsense:\/\/", which is not an etcd endpoint/],
      [{ endpoints: ['nonsense://'] }, RangeError, /^endpoints has "nonsense:\/\/"/],
      [{ endpoints: [''] }, RangeError, /^endpoints has ""/],
      [{ endpoints: [ep], leaseMs: 500 }, RangeError, /^leaseMs must be at least 2000/],
      [{ endpoints: [ep], leaseMs: 1_999 }, RangeError, /^leaseMs must be at least 2000/],
      [{ endpoints: [ep], leaseMs: 86_400_001 }, RangeError, /^leaseMs must be at most/],
      [{ endpoints: [ep], leaseMs: Number.NaN }, RangeError, /^leaseMs/],
      [{ endpoints: [ep], leaseMs: '30000' }, TypeError, /options\.leaseMs/],
      [{ endpoints: [ep], opTimeoutMs: 0 }, RangeError, /^opTimeoutMs/],
      [{ endpoints: [ep], opTimeoutMs: '5' }, TypeError, /options\.opTimeoutMs/],
      [{ endpoints: [ep], keyPrefix: 7 }, TypeError, /options\.keyPrefix/],
      [{ endpoints: [ep], username: 7 }, TypeError, /options\.username/],
      [{ endpoints: [ep], password: 7 }, TypeError, /options\.password/],
      [{ endpoints: [ep], autoRenew: 'yes' }, TypeError, /options\.autoRenew/],
      [{ endpoints: [ep], tls: 'yes' }, TypeError, /options\.tls/],
      [{ endpoints: [ep], bogus: 1 }, TypeError, /unknown property "bogus"/],
    ]
    for (const [options, type, message] of cases) {
      let err: unknown
      try {
        const p = new EtcdLockProvider(options as never)
        cleanups.push(() => p.close())
      } catch (e) {
        err = e
      }
      expect(err, JSON.stringify(options)).toBeInstanceOf(type)
      expect((err as Error).message, JSON.stringify(options)).toMatch(message)
    }
    // The smallest lease and a bare host:port are accepted.
    provider(ep, { leaseMs: 2_000 })
    provider('127.0.0.1:2379')
  })

  it('an endpoint with credentials in it is refused without echoing the password', () => {
    let err: (Error & { code?: string }) | undefined
    try {
      provider('http://user:hunter2@127.0.0.1:2379')
    } catch (e) {
      err = e as Error & { code?: string }
    }
    expect(err).toBeInstanceOf(RangeError)
    expect(err?.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(err?.message).toMatch(/^endpoints/)
    expect(err?.message).not.toContain('hunter2')
  })

  it('an unreachable endpoint is a backend error, never a timeout', async () => {
    const port = await services.freePort()
    const p = provider(`http://127.0.0.1:${port}`)
    const name = unique('unreachable')
    let start = performance.now()
    const err = await p
      .createLock(name)
      .acquire({ timeoutMs: 1_000 })
      .catch((e: unknown) => e)
    expect(performance.now() - start).toBeLessThan(5_000)
    expect(err).not.toBeInstanceOf(LockTimeoutError)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toContain(String(port))
    start = performance.now()
    const tried = await p
      .createLock(name)
      .tryAcquire()
      .catch((e: unknown) => e)
    // A try makes one attempt, bounded by opTimeoutMs (default 5 000).
    expect(performance.now() - start).toBeLessThan(7_000)
    expect(tried).toBeInstanceOf(LockBackendError)
  })
})

describe('EtcdLockProvider shutdown', () => {
  it('close() returns within opTimeoutMs while etcd does not answer', async () => {
    const server = await single()
    const p = new EtcdLockProvider({ endpoints: server.endpoint, opTimeoutMs: 1_000 })
    const held = [
      await p.createLock(unique('c1')).acquire(),
      await p.createLock(unique('c2')).acquire({ leaseMs: 5_000 }),
    ]
    server.kill('SIGSTOP')
    cleanups.push(() => server.kill('SIGCONT'))
    const started = performance.now()
    await p.close()
    const took = performance.now() - started
    // One bound for the whole close (the releases and the revoke of the shared lease together),
    // not a bound for each step after the other.
    expect(took).toBeLessThan(1_500)
    for (const h of held) expect(h.signal.aborted).toBe(true)
  })
})
