#!/usr/bin/env node
// W1–W4 (DESIGN.md §6) for the Redis backend against the `redlock` package (4.x) and
// redis-semaphore (`Mutex`, `RedlockMutex`), on one server and on RedLock over three, with the
// redis-benchmark floor. Starts its own redis-server processes on free loopback ports.
//
//   node bench/redis.mjs [--quick] [--only=id,id] [--reps=N] [--seconds=S]
//
// W1: one loop on one name. W2: 64 loops, each on its own name. W3: 16 loops in one process on
// one name. W4: 4 processes on one name (bench/lib.mjs checks exclusion across them).
// JS libraries wait by polling; they are given a 10 ms retry interval (redlock: ±10 ms jitter),
// far tighter than their defaults, which only favours them.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import path from 'node:path'

import {
  LOOPS,
  ONLY,
  QUICK,
  REPS,
  RUN_S,
  childLoop,
  distlockScripts,
  freshName,
  opt,
  printTable,
  providerLoops,
  root,
  runLoops,
  runProcesses,
  saveResults,
  summarize,
} from './lib.mjs'

const require = createRequire(path.join(root, 'package.json'))
const distlock = require(root)
const Redis = require('ioredis')
const Redlock = require('redlock')
const { Mutex, RedlockMutex } = require('redis-semaphore')

const LEASE = 30_000
const RELEASE_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
let token = 0

function clients(urls) {
  return urls.map((u) => new Redis(u, { enableAutoPipelining: false, maxRetriesPerRequest: 1 }))
}
const quit = (cs) => Promise.all(cs.map((c) => c.quit()))

// The floor among the JS clients: SET NX PX and the Lua release on bare ioredis (it cannot wait).
function rawCase(id, label, enableAutoPipelining) {
  return {
    id,
    group: 'one',
    label,
    workloads: ['W1', 'W2'],
    async make(urls, names) {
      const cs = urls.map((u) => new Redis(u, { enableAutoPipelining, maxRetriesPerRequest: 1 }))
      return {
        loops: names.map((n) => async () => {
          const v = `t${token++}`
          if ((await cs[0].set(n, v, 'PX', LEASE, 'NX')) !== 'OK') throw new Error('raw: the name was taken')
          return async () => {
            await cs[0].eval(RELEASE_LUA, 1, n, v)
          }
        }),
        close: () => quit(cs),
      }
    },
  }
}

// Cases; `group` is 'one' (one server) or 'three' (RedLock over three). A case lists the
// workloads it runs (raw ioredis cannot wait, so it has no W3/W4).
const CASES = [
  {
    id: 'distlock',
    group: 'one',
    label: 'distlock RedisLockProvider',
    workloads: ['W1', 'W2', 'W3', 'W4'],
    async make(urls, names) {
      return providerLoops(new distlock.RedisLockProvider({ urls }), names)
    },
  },
  {
    id: 'redlock',
    group: 'one',
    label: 'redlock 4 (ioredis)',
    workloads: ['W1', 'W2', 'W3', 'W4'],
    async make(urls, names) {
      const cs = clients(urls)
      const rl = new Redlock(cs, { retryCount: -1, retryDelay: 10, retryJitter: 10 })
      return {
        loops: names.map((n) => async () => {
          const lock = await rl.lock(n, LEASE)
          return () => lock.unlock()
        }),
        close: () => quit(cs),
      }
    },
  },
  {
    id: 'redis-semaphore',
    group: 'one',
    label: 'redis-semaphore Mutex (ioredis)',
    workloads: ['W1', 'W2', 'W3', 'W4'],
    async make(urls, names) {
      const cs = clients(urls)
      return {
        loops: names.map((n) => {
          const m = new Mutex(cs[0], n, { lockTimeout: LEASE, acquireTimeout: 600_000, retryInterval: 10 })
          return async () => {
            await m.acquire()
            return () => m.release()
          }
        }),
        close: () => quit(cs),
      }
    },
  },
  rawCase('raw', 'raw ioredis SET NX PX + Lua release (no waiting)', false),
  rawCase('raw-autopipe', 'raw ioredis SET NX PX + Lua release, enableAutoPipelining (no waiting)', true),
  {
    id: 'distlock-3',
    group: 'three',
    label: 'distlock RedisLockProvider, RedLock ×3',
    workloads: ['W1', 'W2'],
    make: (urls, names) => CASES[0].make(urls, names),
  },
  {
    id: 'redlock-3',
    group: 'three',
    label: 'redlock 4, ×3',
    workloads: ['W1', 'W2'],
    make: (urls, names) => CASES[1].make(urls, names),
  },
  {
    id: 'redis-semaphore-3',
    group: 'three',
    label: 'redis-semaphore RedlockMutex, ×3',
    workloads: ['W1', 'W2'],
    async make(urls, names) {
      const cs = clients(urls)
      return {
        loops: names.map((n) => {
          const m = new RedlockMutex(cs, n, { lockTimeout: LEASE, acquireTimeout: 600_000, retryInterval: 10 })
          return async () => {
            await m.acquire()
            return () => m.release()
          }
        }),
        close: () => quit(cs),
      }
    },
  },
]

// A W4 child: one loop of one case on the shared name.
if (opt('child')) {
  const c = CASES.find((x) => x.id === opt('child'))
  const inst = await c.make(opt('urls').split(','), [opt('name')])
  await childLoop(inst.loops[0])
  await inst.close()
  process.exit(0)
}

const services = await import('../lab/index.mjs')
const one = [(await services.startRedis()).url]
const three = await Promise.all([0, 1, 2].map(async () => (await services.startRedis()).url))
const urlsOf = (c) => (c.group === 'one' ? one : three)

const cases = CASES.filter((c) => !ONLY || ONLY.includes(c.id))
const results = []
try {
  for (const w of ['W1', 'W2', 'W3', 'W4']) {
    const runs = cases.filter((c) => c.workloads.includes(w))
    const reps = new Map(runs.map((c) => [c.id, []]))
    for (let r = 0; r < REPS; r++) {
      for (const c of runs) {
        process.stderr.write(`${w} ${c.id} rep ${r + 1}/${REPS}\n`)
        if (w === 'W4') {
          reps.get(c.id).push(await runProcesses(process.argv[1], c.id, [`--urls=${urlsOf(c).join(',')}`]))
          continue
        }
        const shared = freshName(w)
        const names = Array.from({ length: LOOPS[w] }, (_, i) => (w === 'W2' ? `${shared}-${i}` : shared))
        const inst = await c.make(urlsOf(c), names)
        try {
          reps.get(c.id).push(await runLoops(inst, { shared: w !== 'W2' }))
        } finally {
          await inst.close()
        }
      }
    }
    for (const c of runs) results.push(summarize(w, c, reps.get(c.id)))
  }
} finally {
  services.stopServices()
}

// The floor: redis-benchmark, one client, the two commands of a plain lock cycle.
function redisBenchmark(port, args, options = []) {
  const res = spawnSync(
    'redis-benchmark',
    ['-p', String(port), '-c', '1', '-n', QUICK ? '5000' : '50000', ...options, '-q', ...args],
    {
      encoding: 'utf8',
      timeout: 120_000,
    },
  )
  const m = /([\d.]+) requests per second/.exec(res.stdout ?? '')
  return m ? Number(m[1]) : null
}
// distlock's own scripts by EVALSHA: the acquire on a fresh name each time (`__rand_int__`: the
// uncontended path), and the release of a name that is not held (the same script; it skips the
// DEL and the wake-up, so it is a lower bound).
const floorServer = await services.startRedis()
let floor = null
try {
  const set = redisBenchmark(floorServer.port, ['SET', 'floor', 'v', 'PX', '30000'])
  const del = redisBenchmark(floorServer.port, ['EVAL', RELEASE_LUA, '1', 'floor', 'v'])
  if (set && del) floor = { setPerSec: set, releasePerSec: del, cyclesPerSec: 1 / (1 / set + 1 / del) }
  const scripts = distlockScripts()
  if (scripts) {
    const c = new Redis(floorServer.url)
    const [acq, rel] = await Promise.all([c.script('LOAD', scripts.acquire), c.script('LOAD', scripts.release)])
    await c.quit()
    const stem = '{floor}:distlock:'
    const keys = (lock) => [
      lock,
      `${stem}readers`,
      `${stem}fence`,
      `${stem}queue`,
      `${stem}queue-deadlines`,
      `${stem}revoked`,
    ]
    const acquire = redisBenchmark(
      floorServer.port,
      ['EVALSHA', acq, '6', ...keys('fl:__rand_int__'), 'w', 'tok', '30000', '0', '0', '1', 'distlock:wake', 'w1', '0'],
      ['-r', '1000000000'],
    )
    const release = redisBenchmark(floorServer.port, [
      'EVALSHA',
      rel,
      '6',
      ...keys('fl:none'),
      'w',
      'tok',
      '1',
      'distlock:wake',
      '0',
      '0',
    ])
    if (acquire && release) {
      floor.distlock = { acquirePerSec: acquire, releasePerSec: release, cyclesPerSec: 1 / (1 / acquire + 1 / release) }
    }
  }
} finally {
  services.stopServices()
}

const version = spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout.trim()
console.log(`\n${version}\nNode ${process.version}, ${REPS} reps × ${RUN_S} s, medians\n`)
printTable(results)
if (floor) {
  console.log(
    `\nredis-benchmark floor (1 client): SET PX ${floor.setPerSec.toFixed(0)}/s, Lua release ${floor.releasePerSec.toFixed(0)}/s, so ${floor.cyclesPerSec.toFixed(0)} acquire+release cycles/s`,
  )
  if (floor.distlock) {
    const d = floor.distlock
    console.log(
      `distlock's scripts by EVALSHA (1 client): acquire ${d.acquirePerSec.toFixed(0)}/s, release (not held) ${d.releasePerSec.toFixed(0)}/s, so ${d.cyclesPerSec.toFixed(0)} cycles/s`,
    )
  }
}
console.log(`\nraw results: ${saveResults('redis', { server: version, floor, results })}`)
