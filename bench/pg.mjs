#!/usr/bin/env node
// W1 and W3 (DESIGN.md §6) for the PostgreSQL backend, against raw `pg` + pg_advisory_lock and
// the `advisory-lock` package, in one run on one server.
//
//   node bench/pg.mjs [--quick] [--only=id,id] [--reps=N] [--seconds=S] [--url=postgres://...]
//
// W1: one loop, acquire+release of one name. W3: 16 loops in one process on one name, with an
// in-process mutual-exclusion check (violations must be 0), same-owner re-acquire % (how often
// the loop that just released is the next to acquire), and per-loop min..max acquisitions.
// Every loop is bounded in time and count; cases are interleaved per repetition.
// Server: --url, else $DISTLOCK_TEST_PG_URL, else postgres://postgres@127.0.0.1:5432/postgres.
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, '..')
const require = createRequire(path.join(root, 'package.json'))
const argv = process.argv.slice(2)
const opt = (name) => argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3)
const QUICK = argv.includes('--quick')
const REPS = Number(opt('reps') ?? (QUICK ? 1 : 5))
const RUN_S = Number(opt('seconds') ?? (QUICK ? 1 : 3))
const MAX_ITERS = 2_000_000
const LOOPS_W3 = 16
const ONLY = opt('only')?.split(',')
const URL_PG = opt('url') ?? process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

const distlock = require(root)
const pg = require('pg')
const advisoryLock = require('advisory-lock').default

let nameSeq = 0
const freshName = (w) => `bench-${w}-${process.pid}-${nameSeq++}`
// A bigint key for the raw-pg cases, distinct per repetition.
const rawKey = () => BigInt(process.pid) * 1_000_000n + BigInt(nameSeq++)

// A case: make(workload) -> { loops: [acquire() -> release()], close() } with one acquire function
// per loop (W1: 1 loop, W3: 16 loops).
const CASES = [
  {
    id: 'distlock',
    label: 'distlock PostgresLockProvider',
    async make(w, loops) {
      const p = new distlock.PostgresLockProvider({ connectionString: URL_PG, maxConnections: 16 })
      const lock = p.createLock(freshName(w))
      const acquire = async () => {
        const h = await lock.acquire()
        return () => h.release()
      }
      return { loops: Array.from({ length: loops }, () => acquire), close: () => p.close() }
    },
  },
  {
    id: 'pg',
    label: 'raw pg: pg_advisory_lock / pg_advisory_unlock',
    async make(w, loops) {
      // One connection per loop: a session-level advisory lock belongs to its connection.
      const clients = await Promise.all(
        Array.from({ length: loops }, async () => {
          const c = new pg.Client({ connectionString: URL_PG })
          await c.connect()
          return c
        }),
      )
      const key = rawKey().toString()
      return {
        loops: clients.map((c) => async () => {
          await c.query('SELECT pg_advisory_lock($1)', [key])
          return async () => {
            await c.query('SELECT pg_advisory_unlock($1)', [key])
          }
        }),
        close: () => Promise.all(clients.map((c) => c.end())),
      }
    },
  },
  {
    id: 'advisory-lock',
    label: 'advisory-lock (a connection per lock)',
    async make(w, loops) {
      const mutex = advisoryLock(URL_PG)(freshName(w))
      return { loops: Array.from({ length: loops }, () => () => mutex.lock()), close: async () => {} }
    },
  },
]

function pct(sorted, p) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}
const median = (xs) => {
  const s = xs.toSorted((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

async function rep(c, w) {
  const loops = w === 'W1' ? 1 : LOOPS_W3
  const inst = await c.make(w, loops)
  const stopAt = () => performance.now() >= deadline
  let deadline = performance.now() + Math.min(0.3, RUN_S / 4) * 1000
  // warm-up
  await Promise.all(
    inst.loops.map(async (acquire) => {
      for (let i = 0; i < 2000 && !stopAt(); i++) await (await acquire())()
    }),
  )
  const lat = []
  const perLoop = Array.from({ length: loops }, () => 0)
  let inside = 0
  let violations = 0
  let lastOwner = -1
  let sameOwner = 0
  let total = 0
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  deadline = t0 + RUN_S * 1000
  await Promise.all(
    inst.loops.map(async (acquire, id) => {
      while (!stopAt() && total < MAX_ITERS) {
        const s = performance.now()
        const release = await acquire()
        lat.push((performance.now() - s) * 1000)
        if (++inside !== 1) violations++
        if (lastOwner === id) sameOwner++
        lastOwner = id
        perLoop[id]++
        total++
        await new Promise((r) => setImmediate(r)) // the critical section yields once
        inside--
        await release()
      }
    }),
  )
  const secs = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  await inst.close()
  lat.sort((a, b) => a - b)
  return {
    ops: total,
    opsPerSec: total / secs,
    p50Us: pct(lat, 50),
    p99Us: pct(lat, 99),
    cpuUsPerOp: (cpu.user + cpu.system) / total,
    violations,
    sameOwnerPct: loops > 1 ? (100 * sameOwner) / Math.max(1, total - 1) : null,
    perLoopMin: Math.min(...perLoop),
    perLoopMax: Math.max(...perLoop),
  }
}

const cases = CASES.filter((c) => !ONLY || ONLY.includes(c.id))
const results = []
for (const w of ['W1', 'W3']) {
  const reps = new Map(cases.map((c) => [c.id, []]))
  for (let r = 0; r < REPS; r++) {
    for (const c of cases) {
      process.stderr.write(`${w} ${c.id} rep ${r + 1}/${REPS}\n`)
      reps.get(c.id).push(await rep(c, w))
    }
  }
  for (const c of cases) {
    const rs = reps.get(c.id)
    results.push({
      workload: w,
      id: c.id,
      label: c.label,
      reps: rs,
      opsPerSec: median(rs.map((x) => x.opsPerSec)),
      p50Us: median(rs.map((x) => x.p50Us)),
      p99Us: median(rs.map((x) => x.p99Us)),
      cpuUsPerOp: median(rs.map((x) => x.cpuUsPerOp)),
      violations: rs.reduce((a, x) => a + x.violations, 0),
      sameOwnerPct: rs[0].sameOwnerPct === null ? null : median(rs.map((x) => x.sameOwnerPct)),
      perLoop: `${median(rs.map((x) => x.perLoopMin))}..${median(rs.map((x) => x.perLoopMax))}`,
    })
  }
}

const server = await (async () => {
  const c = new pg.Client({ connectionString: URL_PG })
  await c.connect()
  const v = (await c.query('SHOW server_version')).rows[0].server_version
  await c.end()
  return v
})()
console.log(`\nPostgreSQL ${server}, Node ${process.version}, ${REPS} reps x ${RUN_S} s, medians\n`)
console.log(
  '| workload | library | ops/s | distlock ÷ this | p50 µs | p99 µs | CPU µs/op | same-owner % | per-loop min..max | violations |',
)
console.log('| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: |')
for (const r of results) {
  const base = results.find((x) => x.workload === r.workload && x.id === 'distlock')
  const ratio = base ? (base.opsPerSec / r.opsPerSec).toFixed(2) : '–'
  console.log(
    `| ${r.workload} | ${r.label} | ${r.opsPerSec.toFixed(0)} | ${ratio} | ${r.p50Us.toFixed(0)} | ${r.p99Us.toFixed(0)} | ${r.cpuUsPerOp.toFixed(1)} | ${r.sameOwnerPct === null ? '–' : r.sameOwnerPct.toFixed(1)} | ${r.workload === 'W1' ? '–' : r.perLoop} | ${r.violations} |`,
  )
}
const out = path.join(
  here,
  'results',
  `pg-${new Date().toISOString().replaceAll(':', '-')}${QUICK ? '-quick' : ''}.json`,
)
fs.mkdirSync(path.dirname(out), { recursive: true })
fs.writeFileSync(
  out,
  JSON.stringify(
    { date: new Date().toISOString(), server, node: process.version, reps: REPS, seconds: RUN_S, results },
    null,
    2,
  ),
)
console.log(`\nraw results: ${path.relative(root, out)}`)
