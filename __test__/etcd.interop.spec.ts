// distlock against etcd's own lock recipe, both ways: the real `etcdctl lock` (Go's
// concurrency.Mutex) and the server's Lock RPC (v3lock, through the gRPC gateway's JSON), on a
// private etcd member. etcdctl is $DISTLOCK_ETCDCTL_BIN, else `etcdctl` on PATH.
import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'

import { EtcdLockProvider } from 'distlock'

import { Child, eventually, tempDir } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
let services: Services
let seq = 0
const unique = (tag: string) => `${tag}-${process.pid}-${seq++}`
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const b64 = (text: string) => Buffer.from(text).toString('base64')

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

/** The etcdctl binary (the lab, lab/tools.mjs, finds it, or fails saying how to install it; never skips). */
const etcdctlBin = () => services.etcdctlBin()

async function single() {
  const server = await services.startEtcd()
  cleanups.push(() => server.stop())
  return server
}

function provider(endpoint: string): EtcdLockProvider {
  const p = new EtcdLockProvider({ endpoints: [endpoint] })
  cleanups.push(() => p.close())
  return p
}

/** `etcdctl lock <name>` in its interactive form: prints the key once it holds, unlocks on SIGTERM. */
class EtcdctlLock {
  readonly proc: ChildProcess
  readonly lines: string[] = []
  readonly exited: Promise<number | null>

  constructor(endpoint: string, name: string) {
    this.proc = spawn(etcdctlBin(), ['--endpoints', endpoint, 'lock', name], {
      env: { ...process.env, ETCDCTL_API: '3' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    this.proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString()
      const parts = out.split('\n')
      out = parts.pop()!
      this.lines.push(...parts)
    })
    this.proc.stderr!.on('data', (d: Buffer) => this.lines.push(`[stderr] ${d.toString()}`))
    this.exited = new Promise((resolve) => this.proc.on('exit', (code) => resolve(code)))
    cleanups.push(() => this.proc.kill('SIGKILL'))
  }

  get holding(): boolean {
    return this.lines.some((l) => !l.startsWith('[stderr]') && l.length > 0)
  }

  /** The key etcdctl holds, once it holds (bounded wait). */
  async held(timeoutMs = 10_000): Promise<string> {
    await eventually(() => this.holding || this.proc.exitCode !== null, timeoutMs, 20)
    if (!this.holding) throw new Error(`etcdctl lock exited without holding: ${this.lines.join('\n')}`)
    return this.lines.find((l) => !l.startsWith('[stderr]'))!
  }

  /** SIGTERM: etcdctl unlocks and exits. */
  async unlock(): Promise<void> {
    this.proc.kill('SIGTERM')
    const code = await Promise.race([this.exited, sleep(10_000).then(() => 'hung')])
    if (code === 'hung') throw new Error(`etcdctl did not exit on SIGTERM: ${this.lines.join('\n')}`)
  }
}

/** A POST to the member's gRPC gateway (etcd 3.4: /v3/...), JSON with base64 bytes. */
async function gateway<T>(endpoint: string, path: string, body: object): Promise<T> {
  const res = await fetch(`${endpoint}${path}`, { method: 'POST', body: JSON.stringify(body) })
  const text = await res.text()
  if (!res.ok) throw new Error(`etcd answered ${res.status} to ${path}: ${text}`)
  return JSON.parse(text) as T
}

/** How many keys start with `prefix`, whoever wrote them. */
async function countKeys(endpoint: string, prefix: string): Promise<number> {
  const end = Buffer.from(prefix)
  end[end.length - 1]! += 1
  const body = await gateway<{ count?: string }>(endpoint, '/v3/kv/range', {
    key: b64(prefix),
    range_end: end.toString('base64'),
    count_only: true,
  })
  return Number(body.count ?? 0)
}

/** Whether `promise` is still pending after `ms`. */
async function pendingAfter(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let settled = false
  void promise.then(
    () => (settled = true),
    () => (settled = true),
  )
  await sleep(ms)
  return !settled
}

describe('etcd: distlock and etcdctl lock exclude each other', () => {
  it('(a) a distlock acquire waits behind an etcdctl holder and is granted when etcdctl unlocks', async () => {
    const { endpoint } = await single()
    const p = provider(endpoint)
    const name = unique('ctl-holds')
    const ctl = new EtcdctlLock(endpoint, `distlock/${name}`)
    const key = await ctl.held()
    // etcd's layout: <name>/<lease ID in hex>, under the same prefix as distlock's keys.
    expect(key).toMatch(new RegExp(`^distlock/${name}/[0-9a-f]+$`))
    expect(await p.createLock(name).tryAcquire()).toBeNull()
    expect((await p.createLock(name).getInfo()).held).toBe(true)
    const waiting = p.createLock(name).acquire({ timeoutMs: 15_000 })
    expect(await pendingAfter(waiting, 700)).toBe(true)
    await ctl.unlock()
    const h = await waiting
    expect(h.isHeld).toBe(true)
    await h.release()
    expect(await countKeys(endpoint, `distlock/${name}/`)).toBe(0)
  })

  it('(b) etcdctl lock waits while distlock holds and gets the lock when distlock releases', async () => {
    const { endpoint } = await single()
    const p = provider(endpoint)
    const name = unique('dl-holds')
    const h = await p.createLock(name).acquire({ timeoutMs: 5_000 })
    const ctl = new EtcdctlLock(endpoint, `distlock/${name}`)
    // etcdctl has put its key behind distlock's and waits.
    await eventually(async () => (await countKeys(endpoint, `distlock/${name}/`)) === 2, 10_000, 20)
    await sleep(500)
    expect(ctl.holding).toBe(false)
    await h.release()
    await ctl.held(10_000)
    // Now distlock waits behind etcdctl.
    expect(await p.createLock(name).tryAcquire()).toBeNull()
    await ctl.unlock()
  })

  it('(c) a distlock loop and an etcdctl loop on one name never overlap, and both get grants', async () => {
    const { endpoint } = await single()
    const name = unique('interop')
    const dir = tempDir('etcd-interop')
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
    const ms = 8_000
    const ours = new Child('etcd-child.cjs', ['contend', endpoint, name, dir, String(ms)])
    const theirs = new Child('etcdctl-child.cjs', ['loop', etcdctlBin(), endpoint, `distlock/${name}`, dir, String(ms)])
    cleanups.push(() => ours.kill('SIGKILL'))
    cleanups.push(() => theirs.kill('SIGKILL'))
    const [oursDone, theirsDone] = await Promise.all([ours.line('DONE', ms + 30_000), theirs.line('DONE', ms + 60_000)])
    const log = readFileSync(join(dir, 'log.txt'), 'utf8').split('\n')
    const overlaps = log.filter((l) => l.startsWith('overlap'))
    const grants = log.filter((l) => l.startsWith('grant'))
    const etcdctlGrants = grants.filter((l) => l.endsWith(' etcdctl')).length
    const distlockGrants = grants.length - etcdctlGrants
    console.log(
      `interop contention ${ms} ms: ${distlockGrants} distlock grants, ${etcdctlGrants} etcdctl grants, ${overlaps.length} overlaps`,
    )
    expect(overlaps).toEqual([])
    expect(distlockGrants).toBeGreaterThan(0)
    expect(etcdctlGrants).toBeGreaterThan(0)
    expect(oursDone).toMatch(/^DONE \d+ 0$/)
    expect(theirsDone).toMatch(/^DONE \d+ 0$/)
  }, 120_000)

  it('(e) distlock readers and semaphores wait behind an etcdctl holder, and etcdctl waits behind them', async () => {
    const { endpoint } = await single()
    const p = provider(endpoint)
    const name = unique('ctl-shared')
    const ctl = new EtcdctlLock(endpoint, `distlock/${name}`)
    await ctl.held()
    expect(await p.createReaderWriterLock(name).tryAcquireRead()).toBeNull()
    expect(await p.createSemaphore(name, 3).tryAcquire()).toBeNull()
    const sem = p.createSemaphore(name, 3)
    expect((await sem.getInfo()).held).toBe(true)
    const reading = p.createReaderWriterLock(name).acquireRead({ timeoutMs: 15_000 })
    const permit = sem.acquire({ timeoutMs: 15_000 })
    expect(await pendingAfter(Promise.any([reading, permit]), 700)).toBe(true)
    await ctl.unlock()
    const [r, s] = await Promise.all([reading, permit])
    expect(r.isHeld && s.isHeld).toBe(true)

    // The other way: etcdctl waits for the reader and for the semaphore holder.
    const ctl2 = new EtcdctlLock(endpoint, `distlock/${name}`)
    await eventually(async () => (await countKeys(endpoint, `distlock/${name}/`)) === 3, 10_000, 20)
    await sleep(500)
    expect(ctl2.holding).toBe(false)
    await r.release()
    await sleep(500)
    expect(ctl2.holding).toBe(false)
    await s.release()
    await ctl2.held(10_000)
    await ctl2.unlock()
  })
})

describe("etcd: distlock and the server's Lock RPC exclude each other", () => {
  it('(d) through the gateway: a Lock RPC holder makes distlock wait, and a distlock holder makes the RPC wait', async () => {
    const { endpoint } = await single()
    const p = provider(endpoint)
    const name = unique('rpc')
    const lease = await gateway<{ ID: string }>(endpoint, '/v3/lease/grant', { TTL: 30 })
    const locked = await gateway<{ key: string }>(endpoint, '/v3/lock/lock', {
      name: b64(`distlock/${name}`),
      lease: lease.ID,
    })
    // The RPC runs etcd's Mutex: <name>/<lease ID in hex>.
    expect(Buffer.from(locked.key, 'base64').toString()).toBe(`distlock/${name}/${BigInt(lease.ID).toString(16)}`)
    expect(await p.createLock(name).tryAcquire()).toBeNull()
    const waiting = p.createLock(name).acquire({ timeoutMs: 15_000 })
    expect(await pendingAfter(waiting, 700)).toBe(true)
    await gateway(endpoint, '/v3/lock/unlock', { key: locked.key })
    const h = await waiting

    const lease2 = await gateway<{ ID: string }>(endpoint, '/v3/lease/grant', { TTL: 30 })
    const rpc = gateway<{ key: string }>(endpoint, '/v3/lock/lock', { name: b64(`distlock/${name}`), lease: lease2.ID })
    await eventually(async () => (await countKeys(endpoint, `distlock/${name}/`)) === 2, 10_000, 20)
    expect(await pendingAfter(rpc, 700)).toBe(true)
    await h.release()
    const second = await rpc
    expect(await p.createLock(name).tryAcquire()).toBeNull()
    await gateway(endpoint, '/v3/lock/unlock', { key: second.key })
    for (const id of [lease.ID, lease2.ID]) await gateway(endpoint, '/v3/lease/revoke', { ID: id })
    const again = await p.createLock(name).tryAcquire()
    expect(again).not.toBeNull()
    await again!.release()
  })
})
