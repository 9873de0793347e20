// The Redis provider through the public API, against redis-server processes this spec starts on
// free loopback ports: one server here; RedLock and Cluster in redis.redlock.spec.ts.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'

import Redis from 'ioredis'
import Redlock from 'redlock'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { LockBackendError, LockLostError, LockTimeoutError, RedisLockProvider } from 'distlock'

import { Child, ROOT, eventually, tempDir } from './helpers'
import type { RedisServer } from '../lab/index.mjs' with { 'resolution-mode': 'import' }

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
let server: RedisServer
let raw: Redis
let services: Services
const providers: RedisLockProvider[] = []
let seq = 0
const unique = (tag: string) => `${tag}-${process.pid}-${seq++}`

function provider(options: Partial<ConstructorParameters<typeof RedisLockProvider>[0]> = {}): RedisLockProvider {
  const p = new RedisLockProvider({ urls: [server.url], ...options })
  providers.push(p)
  return p
}

beforeAll(async () => {
  services = await import('../lab/index.mjs')
  server = await services.startRedis()
  raw = new Redis(server.url)
})

afterAll(async () => {
  await Promise.all(providers.map((p) => p.close()))
  raw.disconnect()
  services.stopServices()
})

describe('RedisLockProvider on one server', () => {
  it('excludes, times out, and hands out increasing fencing tokens', async () => {
    const a = provider()
    const b = provider()
    const name = unique('mutex')
    const h1 = await a.createLock(name).acquire()
    expect(await raw.pttl(name)).toBeGreaterThan(29_000)
    expect(await b.createLock(name).tryAcquire()).toBeNull()
    await expect(b.createLock(name).acquire({ timeoutMs: 100 })).rejects.toBeInstanceOf(LockTimeoutError)
    await h1.release()
    await h1.release()
    const h2 = await b.createLock(name).acquire({ timeoutMs: 1_000 })
    expect(h2.fencingToken).toBeGreaterThan(h1.fencingToken)
    await h2.release()
    expect(await raw.exists(name)).toBe(0)
  })

  it('answers on the event loop (or the runtime fallback), and rides out that connection being killed', async () => {
    const p = provider()
    const onLoop = process.env.DISTLOCK_DRIVER !== 'tokio'
    expect(p.driver).toBe(onLoop ? 'event-loop' : 'runtime')
    const name = unique('loop')
    const cycle = async () => (await p.createLock(name).acquire({ timeoutMs: 2_000 })).release()
    // The event-loop connection opens in the background on first use; calls go through the
    // background client until it is up.
    await eventually(async () => {
      await cycle()
      return !onLoop || p.eventLoopScripts > 0
    }, 3_000)
    if (!onLoop) {
      for (let i = 0; i < 20; i++) await cycle()
      expect(p.eventLoopScripts).toBe(0)
      return
    }
    const before = p.eventLoopScripts
    for (let i = 0; i < 20; i++) await cycle()
    expect(p.eventLoopScripts).toBeGreaterThanOrEqual(before + 40)
    const h = await p.createLock(name).acquire()
    const clients = String(await raw.client('LIST'))
    const ids = [...clients.matchAll(/id=(\d+) .*name=distlock-event-loop/g)].map((m) => m[1]!)
    // This spec's other providers have theirs too: kill them all.
    expect(ids.length).toBeGreaterThanOrEqual(1)
    for (const id of ids) await raw.client('KILL', 'ID', id)
    // Other names go on; the held lock is confirmed through the other connection and stays
    // exclusive; the event-loop connection comes back.
    const other = await p.createLock(unique('loop-other')).acquire({ timeoutMs: 5_000 })
    await other.release()
    await eventually(() => h.isHeld, 5_000)
    expect(await provider().createLock(name).tryAcquire()).toBeNull()
    await h.release()
    const after = p.eventLoopScripts
    await eventually(async () => {
      await cycle()
      return p.eventLoopScripts > after
    }, 5_000)
  })

  it('a worker thread that used the event-loop connection exits cleanly without closing its provider', async () => {
    const script = `
      const { parentPort, workerData } = require('node:worker_threads')
      const { RedisLockProvider } = require(workerData.root)
      ;(async () => {
        const p = new RedisLockProvider({ urls: [workerData.url] })
        const lock = p.createLock(workerData.name)
        for (let i = 0; i < 300 && (i < 5 || p.eventLoopScripts === 0); i++) {
          await (await lock.acquire({ timeoutMs: 2000 })).release()
          await new Promise((r) => setTimeout(r, 2))
        }
        const h = await lock.acquire()
        parentPort.postMessage({ driver: p.driver, scripts: p.eventLoopScripts, token: String(h.fencingToken) })
      })()
    `
    const worker = new Worker(script, {
      eval: true,
      workerData: { root: ROOT, url: server.url, name: unique('worker') },
    })
    const said = await new Promise<{ driver: string; scripts: number }>((resolve, reject) => {
      worker.once('message', resolve)
      worker.once('error', reject)
    })
    expect(said.driver).toBe(process.env.DISTLOCK_DRIVER === 'tokio' ? 'runtime' : 'event-loop')
    if (said.driver === 'event-loop') expect(said.scripts).toBeGreaterThan(0)
    // Nothing keeps the worker alive (an idle provider does not), so it ends with a lock held
    // and the event-loop connection open: the handles are closed when its environment ends
    // (one left open aborts the whole process: Node asserts the loop has none).
    const code = await new Promise<number>((resolve) => worker.once('exit', resolve))
    expect(code).toBe(0)
  })

  it('keyPrefix prefixes every key', async () => {
    const p = provider({ keyPrefix: 'app1:' })
    const name = unique('prefixed')
    const h = await p.createLock(name).acquire()
    expect(await raw.exists(`app1:${name}`)).toBe(1)
    await h.release()
  })

  it('reader-writer lock and semaphore', async () => {
    const a = provider()
    const b = provider()
    const name = unique('rw')
    const r1 = await a.createReaderWriterLock(name).acquireRead()
    const r2 = await b.createReaderWriterLock(name).acquireRead()
    expect(await b.createReaderWriterLock(name).tryAcquireWrite()).toBeNull()
    await r1.release()
    await r2.release()
    const w = await b.createReaderWriterLock(name).acquireWrite({ timeoutMs: 1_000 })
    expect(await a.createReaderWriterLock(name).tryAcquireRead()).toBeNull()
    await w.release()

    const sem = unique('sem')
    const p1 = await a.createSemaphore(sem, 2).acquire()
    const p2 = await b.createSemaphore(sem, 2).acquire()
    expect(await a.createSemaphore(sem, 2).tryAcquire()).toBeNull()
    const waiting = b.createSemaphore(sem, 2).acquire({ timeoutMs: 5_000 })
    await p1.release()
    const p3 = await waiting
    await Promise.all([p2.release(), p3.release()])
  })

  it('rejects bad options with errors that name them', () => {
    const cases: Array<[unknown, ErrorConstructor, RegExp]> = [
      [undefined, TypeError, /"options" argument/],
      [{}, TypeError, /options\.urls/],
      [{ urls: 6379 }, TypeError, /options\.urls/],
      [{ urls: [] }, RangeError, /urls must list at least one/],
      [{ urls: ['http://localhost'] }, RangeError, /urls \[0\] is not a valid Redis URL/],
      [{ urls: ['redis://a:1', 'redis://a:1'] }, RangeError, /repeats \[0\]/],
      [{ urls: ['redis://h'], leaseMs: 50 }, RangeError, /leaseMs must be at least 100/],
      [{ urls: ['redis://h'], leaseMs: '30000' }, TypeError, /options\.leaseMs/],
      [{ urls: ['redis://h'], leaseMs: 1000, extendEveryMs: 1000 }, RangeError, /extendEveryMs must be shorter/],
      [{ urls: ['redis://h'], keyPrefix: 7 }, TypeError, /options\.keyPrefix/],
      [{ urls: ['redis://h'], serverTimeoutMs: 0 }, RangeError, /serverTimeoutMs/],
    ]
    for (const [options, type, message] of cases) {
      expect(() => new RedisLockProvider(options as never), JSON.stringify(options)).toThrow(type)
      expect(() => new RedisLockProvider(options as never), JSON.stringify(options)).toThrow(message)
    }
    let err: (Error & { code?: string }) | undefined
    try {
      providers.push(new RedisLockProvider({ urls: ['http://user:hunter2@host'] }))
    } catch (e) {
      err = e as Error & { code?: string }
    }
    expect(err?.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(err?.message).not.toContain('hunter2')
  })

  it('a wrong password, an unreachable server and a key of another type are backend errors', async () => {
    const locked = await services.startRedis(['--requirepass', 'right'])
    const wrong = provider({ urls: [`redis://:wrong@127.0.0.1:${locked.port}`] })
    const e1 = await wrong
      .createLock('x')
      .acquire({ timeoutMs: 0 })
      .catch((e: Error) => e)
    expect(e1).toBeInstanceOf(LockBackendError)
    expect((e1 as Error).message).toMatch(/WRONGPASS/)
    expect((e1 as Error).message).not.toContain(':wrong@')
    locked.stop()

    const gone = provider({ urls: [`redis://127.0.0.1:${locked.port}`] })
    await expect(gone.createLock('x').acquire({ timeoutMs: 500 })).rejects.toBeInstanceOf(LockBackendError)

    const name = unique('hash')
    await raw.hset(name, 'f', 'v')
    const e3 = await provider()
      .createLock(name)
      .acquire()
      .catch((e: Error) => e)
    expect(e3).toBeInstanceOf(LockBackendError)
    expect((e3 as Error).message).toMatch(/another Redis type/)
  })

  it('speaks TLS through rediss:// URLs, trusting the CAs in SSL_CERT_FILE', async () => {
    const tls = await services.startRedis([], { tls: true })
    const saved = process.env.SSL_CERT_FILE
    // The roots are read when the provider is made: the system's, or SSL_CERT_FILE's.
    process.env.SSL_CERT_FILE = tls.caFile
    let trusting: RedisLockProvider
    try {
      trusting = provider({ urls: [tls.url] })
    } finally {
      if (saved === undefined) delete process.env.SSL_CERT_FILE
      else process.env.SSL_CERT_FILE = saved
    }
    const h = await trusting.createLock(unique('tls')).acquire({ timeoutMs: 5_000 })
    await h.release()
    const untrusting = provider({ urls: [tls.url] })
    const e = await untrusting
      .createLock(unique('tls'))
      .acquire({ timeoutMs: 2_000 })
      .catch((err: Error) => err)
    expect(e).toBeInstanceOf(LockBackendError)
    const plain = provider({ urls: [`redis://127.0.0.1:${tls.port}`], serverTimeoutMs: 500 })
    await expect(plain.createLock(unique('tls')).acquire({ timeoutMs: 1_000 })).rejects.toBeInstanceOf(LockBackendError)
  })

  it('excludes across processes: 4 children × 50 increments lose none', async () => {
    const dir = tempDir('redis-counter')
    const name = unique('counter')
    const kids = Array.from(
      { length: 4 },
      () => new Child('child.cjs', ['redis', 'counter', server.url, name, dir, '50']),
    )
    for (const k of kids) {
      expect((await k.exit(60_000)).code, k.lines.join('\n')).toBe(0)
    }
    expect(Number(readFileSync(join(dir, 'counter.txt'), 'utf8'))).toBe(200)
  })

  it('a holder killed with kill -9 frees the lock when its lease runs out', async () => {
    const name = unique('kill9')
    const holder = new Child('child.cjs', ['redis', 'hold', server.url, name, '', '', '1000'])
    await holder.line('HOLDING')
    const p = provider()
    expect(await p.createLock(name).tryAcquire()).toBeNull()
    holder.kill('SIGKILL')
    await holder.exited
    const start = Date.now()
    const h = await p.createLock(name).acquire({ timeoutMs: 10_000 })
    expect(Date.now() - start).toBeLessThan(5_000)
    await h.release()
  })

  it('a holder stopped past its lease learns it lost the lock, and does not crash', async () => {
    const name = unique('sigstop')
    const holder = new Child('child.cjs', ['redis', 'hold', server.url, name, '', '', '600'])
    await holder.line('HOLDING')
    holder.kill('SIGSTOP')
    const p = provider()
    const taken = await p.createLock(name).acquire({ timeoutMs: 10_000 })
    holder.kill('SIGCONT')
    const lost = await holder.line('LOST')
    expect(lost).toMatch(/was lost/)
    expect(holder.proc.exitCode).toBeNull()
    holder.kill('SIGKILL')
    await taken.release()
  })

  it('lost locks abort handle.signal with LockLostError', async () => {
    const p = provider({ leaseMs: 300 })
    const name = unique('lost')
    const h = await p.createLock(name).acquire()
    const aborted = new Promise<unknown>((resolve) =>
      h.signal.addEventListener('abort', () => resolve(h.signal.reason)),
    )
    await raw.del(name)
    const reason = await aborted
    expect(reason).toBeInstanceOf(LockLostError)
    await h.release()
  })

  it('excludes the redlock npm package on the same name, both ways', async () => {
    const client = new Redis(server.url)
    // redlock 4 calls eval([script, n, ...args], cb), which ioredis flattens; its types predate ioredis 5.
    const redlock = new Redlock([client as never], { retryCount: 0 })
    try {
      const name = unique('interop')
      const theirs = await redlock.lock(name, 5_000)
      const p = provider()
      expect(await p.createLock(name).tryAcquire()).toBeNull()
      const waiting = p.createLock(name).acquire({ timeoutMs: 4_000 })
      await theirs.unlock()
      const ours = await waiting
      await expect(redlock.lock(name, 5_000)).rejects.toThrow()
      await ours.release()
      const again = await redlock.lock(name, 5_000)
      await again.unlock()
    } finally {
      client.disconnect()
    }
  })

  it('release never hangs on a stopped server and never throws for an expired lease', async () => {
    const own = await services.startRedis()
    const p = provider({ urls: [own.url], leaseMs: 300, serverTimeoutMs: 200 })
    const h = await p.createLock(unique('dead')).acquire()
    own.pause()
    await new Promise((r) => setTimeout(r, 500))
    const start = Date.now()
    await h.release()
    expect(Date.now() - start).toBeLessThan(2_000)
    own.stop()
  })

  it('renews 10 000 held locks in batches', async () => {
    // A lease that outlasts a loaded machine's slow acquire of 10 000 locks (debug build, 2
    // cores), and a wait longer than the lease: without renewals every lock would be lost.
    const p = provider({ leaseMs: 4_000 })
    const handles = []
    for (let i = 0; i < 10_000; i += 500) {
      handles.push(
        ...(await Promise.all(Array.from({ length: 500 }, (_, j) => p.createLock(`many-${i + j}`).acquire()))),
      )
    }
    await new Promise((r) => setTimeout(r, 4_500))
    expect(handles.every((h) => !h.signal.aborted)).toBe(true)
    const { renewals, scripts } = p.renewalStats
    expect(renewals).toBeGreaterThanOrEqual(10_000)
    expect(scripts * 100).toBeLessThanOrEqual(renewals)
    expect(p.heldCount).toBe(10_000)
    // In rounds of 500, as they were taken: 10 000 releases at once can outlast the 1 s
    // serverTimeoutMs on a loaded debug build, which is not what this test is about.
    for (let i = 0; i < handles.length; i += 500) await Promise.all(handles.slice(i, i + 500).map((h) => h.release()))
    expect(p.heldCount).toBe(0)
  })
})
