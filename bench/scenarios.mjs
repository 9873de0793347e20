#!/usr/bin/env node
// The extra scenarios of issue 5, per backend (file, PostgreSQL, Redis on a server it starts):
// - 10 000 locks held at once: Node RSS growth, server connections (PostgreSQL), renewal
//   traffic per second (Redis, leaseMs 3 000 so renewals run every second);
// - 1 000 waiters on one name: all granted, in call order, and how long the drain takes;
// - 100 000 acquire/release cycles on every backend (1 000 or 5 000 with --quick) with RSS
//   before and after, to show nothing leaks;
// - waiter drain (issue 11): 10 000, 30 000 and 100 000 waiters on one name in one process
//   (memory and file; 10 000 on PostgreSQL and Redis), time to queue them and to drain them,
//   µs per waiter (flat when the drain is linear), whether grants kept call order, and RSS per
//   queued waiter (RSS per held lock is in the first part).
//
//   node bench/scenarios.mjs [--quick] [--url=postgres://...] [--parts=held,waiters,cycles,drain]
//   [--drain=10000,30000,100000] [--drain-backends=memory,file,postgres,redis]
import { createRequire } from 'node:module'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import { QUICK, opt, root, saveResults } from './lib.mjs'

const require = createRequire(path.join(root, 'package.json'))
const distlock = require(root)
const URL_PG = opt('url') ?? (await (await import('../lab/index.mjs')).findPostgres()).url
const PARTS = (opt('parts') ?? 'held,waiters,cycles,drain').split(',')
const DRAIN_SIZES = (opt('drain') ?? (QUICK ? '2000,5000' : '10000,30000,100000')).split(',').map(Number)
// The server backends drain the smallest size only: their per-grant round trip dominates.
const DRAIN_BACKENDS = (opt('drain-backends') ?? 'memory,file,postgres,redis').split(',')
const services = await import('../lab/index.mjs')
const needsServers = PARTS.some((p) => p !== 'drain') || DRAIN_BACKENDS.some((b) => b === 'postgres' || b === 'redis')
const redis = needsServers ? await services.startRedis() : null

const mb = (bytes) => Math.round(bytes / 2 ** 20)
const rss = () => {
  globalThis.gc?.()
  return process.memoryUsage().rss
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const BACKENDS = {
  file: () => new distlock.FileLockProvider({ directory: fs.mkdtempSync(path.join(os.tmpdir(), 'distlock-scen-')) }),
  memory: () => new distlock.MemoryLockProvider(),
  postgres: () => new distlock.PostgresLockProvider({ connectionString: URL_PG, maxConnections: 16 }),
  redis: () => new distlock.RedisLockProvider({ urls: [redis.url], leaseMs: 3_000 }),
}
const SERVERS = new Set(['postgres', 'redis'])
const tag = `${process.pid}-${Date.now()}`
// --quick holds 2 000 locks instead of 10 000: a smoke check, not the measurement.
const HELD = QUICK ? 2_000 : 10_000
const out = { held: {}, waiters: {}, cycles: {}, drain: {} }

try {
  for (const [name, make] of PARTS.includes('held') ? Object.entries(BACKENDS) : []) {
    // The file backend keeps one open file per held lock: 10 000 needs `ulimit -n` above that.
    const p = make()
    const before = rss()
    const handles = []
    for (let i = 0; i < HELD; i += 500) {
      handles.push(
        ...(await Promise.all(Array.from({ length: 500 }, (_, j) => p.createLock(`held-${tag}-${i + j}`).acquire()))),
      )
    }
    const grown = rss() - before
    const row = { locks: handles.length, rssGrowthMb: mb(grown), rssBytesPerLock: Math.round(grown / handles.length) }
    if (name === 'postgres') row.connections = p.connections ?? null
    if (name === 'redis') {
      const s0 = p.renewalStats
      await sleep(QUICK ? 1_000 : 5_000)
      const s1 = p.renewalStats
      const secs = QUICK ? 1 : 5
      row.renewalsPerSec = Math.round((s1.renewals - s0.renewals) / secs)
      row.scriptsPerSec = Math.round((s1.scripts - s0.scripts) / secs)
      row.lost = handles.filter((h) => h.signal.aborted).length
    }
    await Promise.all(handles.map((h) => h.release()))
    await p.close()
    out.held[name] = row
    console.log(`${HELD} held, ${name}:`, row)
  }

  for (const [name, make] of PARTS.includes('waiters') ? Object.entries(BACKENDS) : []) {
    const p = make()
    const lock = p.createLock(`waiters-${tag}`)
    const first = await lock.acquire()
    const order = []
    const start = performance.now()
    const waiters = Array.from({ length: 1_000 }, (_, i) =>
      lock.acquire({ timeoutMs: 120_000 }).then(async (h) => {
        order.push(i)
        await h.release()
      }),
    )
    await first.release()
    await Promise.all(waiters)
    const row = {
      waiters: 1_000,
      drainMs: Math.round(performance.now() - start),
      inCallOrder: order.every((v, i) => v === i),
    }
    await p.close()
    out.waiters[name] = row
    console.log(`1 000 waiters, ${name}:`, row)
  }

  for (const [name, make] of PARTS.includes('cycles') ? Object.entries(BACKENDS) : []) {
    const n = QUICK ? (SERVERS.has(name) ? 1_000 : 5_000) : 100_000
    const p = make()
    const lock = p.createLock(`cycles-${tag}`)
    for (let i = 0; i < 1_000; i++) await (await lock.acquire()).release()
    const before = rss()
    const start = performance.now()
    for (let i = 0; i < n; i++) await (await lock.acquire()).release()
    const secs = (performance.now() - start) / 1000
    await sleep(100)
    const row = { cycles: n, opsPerSec: Math.round(n / secs), rssBeforeMb: mb(before), rssAfterMb: mb(rss()) }
    await p.close()
    out.cycles[name] = row
    console.log(`${n} cycles, ${name}:`, row)
  }

  // Waiter drain: N acquires queue on one held name, then the holder releases and each waiter
  // releases as soon as it is granted. Linear means µs per waiter stays flat as N grows.
  for (const name of PARTS.includes('drain') ? DRAIN_BACKENDS : []) {
    const rows = []
    for (const n of SERVERS.has(name) ? DRAIN_SIZES.slice(0, 1) : DRAIN_SIZES) {
      const p = BACKENDS[name]()
      const lock = p.createLock(`drain-${tag}-${n}`)
      const first = await lock.acquire()
      const order = []
      const rssBefore = rss()
      const t0 = performance.now()
      const waiters = []
      for (let i = 0; i < n; i++) {
        waiters.push(
          lock.acquire({ timeoutMs: 600_000 }).then(async (h) => {
            order.push(i)
            await h.release()
          }),
        )
      }
      const t1 = performance.now()
      // Taken after the clock: rss() collects garbage first.
      const rssQueued = rss()
      await first.release()
      await Promise.all(waiters)
      const t2 = performance.now()
      const row = {
        waiters: n,
        queueMs: Math.round(t1 - t0),
        drainMs: Math.round(t2 - t1),
        usPerWaiter: Math.round(((t2 - t0) * 1000) / n),
        inCallOrder: order.length === n && order.every((v, i) => v === i),
        rssBytesPerWaiter: Math.round((rssQueued - rssBefore) / n),
      }
      await p.close()
      rows.push(row)
      console.log(`waiter drain, ${name}:`, row)
    }
    out.drain[name] = rows
  }
} finally {
  services.stopServices()
}
console.log(`\nraw results: ${saveResults('scenarios', out)}`)
