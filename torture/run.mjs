// `npm run torture`: the stress-and-fault suite (issue 11). Many worker processes contend for one
// name on every backend and topology while faults are injected with real signals, real server
// kills and restarts and a loopback TCP proxy; single-process probes check that calls settle
// within their budgets. Each row states its promise and checks it; the run exits non-zero when
// any promise is broken. Results: torture/results/latest.{md,json} (smoke: smoke.{md,json}).
//
//   node torture/run.mjs            the full run (about 10 minutes)
//   node torture/run.mjs --smoke    a subset in under 2 minutes (run by npm test)
//   node torture/run.mjs --only redis-single    rows whose id contains (or matches) the pattern
//   node torture/run.mjs --list     the rows and their promises, without running them
//   --out DIR                       where to write the results
import { fork, spawn } from 'node:child_process'
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { analyze } from './lib/analyze.mjs'
import {
  cleanupAll,
  findMysql,
  findPostgres,
  onCleanup,
  privatePostgres,
  sleep,
  startEtcd,
  startEtcdCluster,
  startMysql,
  startProxy,
  startRedis,
  startRedisCluster,
  startRedlock,
  startSentinelGroup,
  urlPort,
  waitFor,
} from '../lab/index.mjs'

const HERE = new URL('.', import.meta.url).pathname
const ROOT = join(HERE, '..')

// ---------------------------------------------------------------------------------------------
// Options and bounds

const argv = process.argv.slice(2)
const flag = (name) => argv.includes(name)
const option = (name) => {
  const i = argv.indexOf(name)
  return i >= 0 ? argv[i + 1] : undefined
}
const SMOKE = flag('--smoke')
const ONLY = option('--only')
const OUT = option('--out') ?? join(HERE, 'results')
const BASENAME = SMOKE ? 'smoke' : 'latest'
/** The whole run stops starting rows after this long (rows not run count as failures). */
const RUN_BUDGET_MS = SMOKE ? 110_000 : 1_600_000

const envMs = (name, fallback) => (process.env[name] ? Number(process.env[name]) : fallback)
/** The bounds the rows check. They are the library's promises; keep them in step with the README. */
const BOUNDS = {
  /** acquire({ timeoutMs: T }) settles by T + this (single-process probes). */
  acquireSlackMs: envMs('TORTURE_ACQUIRE_SLACK_MS', 300),
  /** The same in the many-process rows, where 8+ processes share the CPU with the servers. */
  workerSlackMs: envMs('TORTURE_WORKER_SLACK_MS', 1_000),
  /**
   * tryAcquire() and release() settle within the backend's documented bound, whatever the
   * network does: Redis `serverTimeoutMs` (default 1 000), PostgreSQL, MySQL and etcd
   * `opTimeoutMs` (default 5 000); plus this slack.
   */
  callSlackMs: envMs('TORTURE_CALL_SLACK_MS', 500),
  /** The documented per-call bounds by backend (defaults of the providers' options). */
  callMs: { redis: 1_000, postgres: 5_000, mysql: 5_000, etcd: 5_000, file: 1_000 },
  /** After a stalled server resumes, a name an abandoned call touched is free again within this. */
  orphanMs: envMs('TORTURE_ORPHAN_MS', 3_000),
}

/** The bound of tryAcquire() and release() on `backend` (the family: redis, postgres, file). */
/** The bound of a row's backend (`redis (redlock-3)`, `etcd (3 members, private)`: the first word). */
const callBound = (backend) => (BOUNDS.callMs[backend.split(' ')[0]] ?? 1_000) + BOUNDS.callSlackMs

// ---------------------------------------------------------------------------------------------
// Servers shared by the rows that do not break them (started on first use)

const once = (fn) => {
  let p
  return () => (p ??= fn())
}
const shared = {
  redis: once(() => startRedis()),
  redlock3: once(() => startRedlock(3)),
  redlock5: once(() => startRedlock(5)),
  cluster: once(() => startRedisCluster()),
  sentinel: once(() => startSentinelGroup()),
  pg: once(() => findPostgres()),
  pgPrivate: once(() => privatePostgres()),
  mysql: once(() => findMysql()),
  // A server of the suite's own, for the rows that kill every client session.
  mysqlPrivate: once(() => startMysql()),
  etcd: once(() => startEtcd()),
  etcd3: once(() => startEtcdCluster(3)),
}

const redisProvider = (urls, extra = {}) => ({ type: 'redis', urls: [urls].flat(), ...extra })
const pgProvider = (url) => ({ type: 'postgres', connectionString: url })
const withPort = (url, port) => {
  const u = new URL(url)
  u.port = String(port)
  return u.toString()
}

// ---------------------------------------------------------------------------------------------
// The rows

/** How long a PostgreSQL client may take to read that the server ended its session. */
const SESSION_END_GRACE_MS = 250
/**
 * The MySQL rows' probe period: a MySQL client learns that the server ended its session at its
 * next probe (the driver does not read an idle socket), so its grace is two periods and the
 * PostgreSQL grace on top.
 */
const MYSQL_KEEPALIVE_MS = 250
const MYSQL_GRACE_MS = 2 * MYSQL_KEEPALIVE_MS + SESSION_END_GRACE_MS
const PROMISE = {
  strict:
    'No two holders at once (markers and time line), fencing tokens in grant order, no lost update, every call within its budget.',
  allowed:
    'No two holders at once unless the earlier holder’s synchronous isHeld check was already false before the later grant and the later token is larger; fencing never goes backwards; no lost update; every call within its budget.',
  'session-end': `The server ends the holder’s session and frees its locks at once, so a second holder cannot be prevented: the earlier holder’s isHeld turns false (and its signal aborts) within ${SESSION_END_GRACE_MS} ms of the later grant, as soon as its client reads the end of the session, and the later token is larger; fencing never goes backwards; every call within its budget. (Without fencing at the storage, a write in that window can be lost: counted, not promised.)`,
}

/** Each topology's provider configuration (servers started on first use), and a row setup for it. */
const TOPOLOGIES = {
  file: { backend: 'file', config: async (dir) => ({ type: 'file', directory: join(dir, 'locks') }) },
  postgres: { backend: 'postgres', config: async () => pgProvider((await shared.pg()).url) },
  'redis-single': { backend: 'redis', config: async () => redisProvider((await shared.redis()).url) },
  'redlock-3': { backend: 'redis', config: async () => redisProvider((await shared.redlock3()).urls) },
  'redlock-5': { backend: 'redis', config: async () => redisProvider((await shared.redlock5()).urls) },
  cluster: { backend: 'redis', config: async () => redisProvider((await shared.cluster()).url) },
  sentinel: { backend: 'redis', config: async () => redisProvider((await shared.sentinel()).url) },
  mysql: {
    backend: 'mysql',
    config: async () => ({
      type: 'mysql',
      connectionString: (await shared.mysql()).url,
      keepaliveMs: MYSQL_KEEPALIVE_MS,
    }),
  },
  etcd: { backend: 'etcd', config: async () => ({ type: 'etcd', endpoints: [(await shared.etcd()).endpoint] }) },
  'etcd-3': { backend: 'etcd', config: async () => ({ type: 'etcd', endpoints: (await shared.etcd3()).endpoints }) },
}
for (const t of Object.values(TOPOLOGIES)) {
  t.setup = async (dir) => {
    const cfg = await t.config(dir)
    return { provider: () => cfg }
  }
}

const rows = []

// The no-fault matrix: every topology × mutex / reader-writer / semaphore(3).
const SMOKE_MATRIX = new Set([
  'file/mutex',
  'file/rw',
  'postgres/mutex',
  'postgres/semaphore',
  'redis-single/mutex',
  'redis-single/rw',
  'redis-single/semaphore',
  'redlock-3/mutex',
  'cluster/mutex',
  'mysql/mutex',
  'etcd/mutex',
])
/** How many holders (permits) a row's primitive admits: a semaphore 3, a semaphore of weighted acquires 5. */
const permitsOf = (row) => ({ semaphore: 3, permits: 5 })[row.primitive] ?? 1

/** A no-fault row: `workers` processes of `callers` loops each contend for one name. */
function stressRow({ topology, primitive, suffix = '', fault = 'none', workers = 8, callers = 1, durationMs, smoke }) {
  rows.push({
    id: `stress/${topology}/${primitive}${suffix}`,
    type: 'workers',
    fault,
    backend: `${TOPOLOGIES[topology].backend} (${topology})`,
    primitive,
    mode: 'strict',
    promise: PROMISE.strict + ' No lost signal, no backend error, and no acquire waits out its 10 s timeout.',
    noFault: true,
    workers,
    callers,
    durationMs,
    smoke: smoke ? { workers: 4, durationMs: 2_000 } : null,
    steps: 1,
    stepMs: 0,
    timeoutMs: 10_000,
    setup: TOPOLOGIES[topology].setup,
  })
}

for (const topology of Object.keys(TOPOLOGIES)) {
  for (const primitive of ['mutex', 'rw', 'semaphore']) {
    // Semaphores need one deployment: RedLock refuses them (documented). MySQL has no
    // reader-writer lock (named locks are exclusive; refused, documented).
    if (topology.startsWith('redlock') && primitive === 'semaphore') continue
    if (topology === 'mysql' && primitive === 'rw') continue
    const long = topology.startsWith('redlock') && primitive === 'mutex'
    stressRow({
      topology,
      primitive,
      fault: long ? 'none (the RedLock overlap run of issue 11)' : 'none',
      durationMs: long ? 60_000 : 20_000,
      smoke: SMOKE_MATRIX.has(`${topology}/${primitive}`),
    })
  }
}

// In-process contention too: 4 processes × 4 loops on one name, so every handoff inside a
// process (the next caller's attempt sent right behind the release) is checked against the
// other processes' grants. `permits`: a semaphore of 5 whose acquires take 1 to 3 permits at
// once; the permits held never add up to more than 5 (each permit is a slot marker).
const IN_PROCESS = {
  file: ['mutex', 'permits'],
  postgres: ['mutex', 'rw', 'semaphore', 'permits'],
  'redis-single': ['mutex', 'rw', 'semaphore', 'permits'],
  'redlock-3': ['mutex'],
  mysql: ['mutex', 'semaphore', 'permits'],
  etcd: ['mutex', 'rw', 'permits'],
}
const IN_PROCESS_SMOKE = new Set(['redis-single/mutex', 'postgres/permits'])
for (const [topology, primitives] of Object.entries(IN_PROCESS)) {
  for (const primitive of primitives) {
    stressRow({
      topology,
      primitive,
      suffix: '-4x4-callers',
      workers: 4,
      callers: 4,
      durationMs: 20_000,
      smoke: IN_PROCESS_SMOKE.has(`${topology}/${primitive}`),
    })
  }
}

/** A fault row on one mutex: workers with 100 ms critical sections, so faults hit holders. */
function faultRow(row) {
  rows.push({
    type: 'workers',
    primitive: 'mutex',
    workers: 8,
    steps: 4,
    stepMs: 25,
    timeoutMs: 2_000,
    promise: PROMISE[row.mode],
    ...row,
  })
}

/** Grants with tGranted after `t` (ns), optionally only by workers `which`. */
const grantsAfter = (grants, t, which) => grants.filter((g) => g.tGranted > t && (!which || which(g.worker))).length
const lastEvent = (events, what) => events.filter((e) => e.what.startsWith(what)).at(-1)?.t ?? 0
/** A check that service resumed: some grant after the last `what` event. */
const resumes = (what, which) => (grants, events) =>
  grantsAfter(grants, lastEvent(events, what), which) > 0
    ? []
    : [`no grant after the last "${what}": service did not resume`]

for (const [backend, setup] of [
  [
    'redis',
    async () => ({ upstream: (await shared.redis()).port, make: (p) => redisProvider(`redis://127.0.0.1:${p}`) }),
  ],
  [
    'postgres',
    async () => {
      const { url } = await shared.pg()
      return { upstream: urlPort(url), make: (p) => pgProvider(withPort(url, p)) }
    },
  ],
]) {
  const proxied = async (dir, ctx, half) => {
    const s = await setup()
    const proxy = await startProxy(s.upstream)
    ctx.proxy = proxy
    const via = await s.make(proxy.port)
    const direct = await s.make(s.upstream)
    return { provider: (i) => (half && i % 2 === 1 ? direct : via) }
  }
  faultRow({
    id: `fault/proxy-delay/${backend}`,
    fault: 'every connection through a proxy: 50 ms, then 200 ms each way, then normal',
    backend,
    mode: 'strict',
    durationMs: 7_000,
    setup: (dir, ctx) => proxied(dir, ctx, false),
    async faults(ctx) {
      await ctx.at(1_000)
      ctx.proxy.setMode('delay', 50)
      ctx.mark('delay 50')
      await ctx.at(3_000)
      ctx.proxy.setMode('delay', 200)
      ctx.mark('delay 200')
      await ctx.at(5_000)
      ctx.proxy.setMode('pass')
      ctx.mark('pass')
    },
    check: resumes('pass'),
  })
  faultRow({
    id: `fault/proxy-blackhole/${backend}`,
    fault:
      'half the processes behind a proxy that goes silent (blackhole) for 3.5 s, longer than the 2 s lease, then heals',
    backend,
    mode: 'allowed',
    leaseMs: 2_000,
    durationMs: 7_500,
    setup: (dir, ctx) => proxied(dir, ctx, true),
    async faults(ctx) {
      await ctx.at(1_500)
      ctx.proxy.setMode('blackhole')
      ctx.mark('blackhole')
      await ctx.at(5_000)
      // The partitioned connections are cut (as a long partition would), then the link is back.
      ctx.proxy.setMode('reset')
      await sleep(100)
      ctx.proxy.setMode('pass')
      ctx.mark('healed')
    },
    check: resumes('healed'),
  })
  faultRow({
    id: `fault/proxy-reset/${backend}`,
    fault: 'half the processes behind a proxy that resets every connection (RST) for 1 s, twice',
    backend,
    // A reset session frees PostgreSQL's advisory locks at once; Redis keeps its keys.
    mode: backend === 'postgres' ? 'session-end' : 'strict',
    durationMs: 7_000,
    setup: (dir, ctx) => proxied(dir, ctx, true),
    async faults(ctx) {
      for (const at of [1_500, 4_000]) {
        await ctx.at(at)
        ctx.proxy.setMode('reset')
        ctx.mark('reset')
        await sleep(1_000)
        ctx.proxy.setMode('pass')
        ctx.mark('pass')
      }
    },
    // The processes behind the proxy (even indexes) get the lock again after the resets.
    check: resumes('pass', (w) => w % 2 === 0),
  })
}

/** The heal-cycles row: partitions that heal with no reset, each with calls in flight. */
const HEAL = { cycles: 4, partitionMs: 3_500, passMs: 2_500, serverTimeoutMs: 1_000 }
/** After a heal, an acquire of a free name is granted within one server timeout plus the call slack. */
const HEAL_BOUND_MS = HEAL.serverTimeoutMs + BOUNDS.callSlackMs
faultRow({
  id: 'fault/proxy-heal-cycles/redis',
  fault: `half the processes and a probe behind a proxy that goes silent (blackhole) for ${HEAL.partitionMs / 1000} s and then passes again, with no reset, ${HEAL.cycles} times; holds, waits, tries and releases in flight`,
  backend: 'redis',
  mode: 'strict',
  promise: `${PROMISE.strict} After every heal the probe's acquire of a free name is granted within ${HEAL_BOUND_MS} ms (serverTimeoutMs + ${BOUNDS.callSlackMs}), its held lock is confirmed and its waiting acquire granted; every process behind the proxy is granted again after every heal.`,
  tryRatio: 0.3,
  durationMs: 1_000 + HEAL.cycles * (HEAL.partitionMs + HEAL.passMs + 500),
  setup: async (dir, ctx) => {
    const redis = await shared.redis()
    ctx.proxy = await startProxy(redis.port)
    ctx.direct = redisProvider(redis.url)
    const via = redisProvider(`redis://127.0.0.1:${ctx.proxy.port}`)
    return { provider: (i) => (i % 2 === 1 ? ctx.direct : via) }
  },
  async faults(ctx) {
    await ctx.at(1_000)
    const cfg = {
      scenario: 'heal-cycles',
      name: rowName('heal-cycles'),
      direct: ctx.direct,
      proxied: redisProvider(`redis://127.0.0.1:${ctx.proxy.port}`),
      ...HEAL,
      boundMs: HEAL_BOUND_MS,
    }
    let cycle = 0
    const { result, stderr } = await forkProbe(cfg, {
      blackhole: () => {
        ctx.proxy.setMode('blackhole')
        ctx.mark(`blackhole ${++cycle}`)
      },
      pass: () => {
        if (ctx.proxy.mode === 'pass') return
        ctx.proxy.setMode('pass')
        ctx.mark(`healed ${cycle}`)
      },
    })
    if (!result || result.error) ctx.mark(`fault failed: the heal probe: ${result?.error ?? stderr.slice(-300)}`)
    for (const h of result?.heals ?? []) {
      const ok =
        h.firstGrantMs != null && h.firstGrantMs <= HEAL_BOUND_MS && h.held === 'confirmed' && h.pending === 'granted'
      ctx.mark(
        `heal-probe ${h.k + 1} ${ok ? 'ok' : 'broken'}: first grant ${h.firstGrantMs == null ? `none (${h.error})` : `${Math.round(h.firstGrantMs)} ms`}, held ${h.held}, waiter ${h.pending}`,
      )
    }
  },
  check: (grants, events) => {
    const problems = events
      .filter((e) => e.what.startsWith('heal-probe') && e.what.includes(' broken:'))
      .map((e) => e.what)
    const probes = events.filter((e) => e.what.startsWith('heal-probe')).length
    if (probes !== HEAL.cycles) problems.push(`${probes} of ${HEAL.cycles} heals measured by the probe`)
    // Every process behind the proxy (even indexes) is granted again after every heal.
    const heals = events.filter((e) => e.what.startsWith('healed'))
    for (const [n, heal] of heals.entries()) {
      const next = events.find((e) => e.what === `blackhole ${n + 2}`)?.t ?? Infinity
      for (let w = 0; w < 8; w += 2) {
        if (!grants.some((g) => g.worker === w && g.tGranted > heal.t && g.tGranted < next))
          problems.push(`worker ${w} was not granted between ${heal.what} and the next partition`)
      }
    }
    return problems
  },
  summary: (events) => {
    const ms = events
      .map((e) => /^heal-probe \d+ \w+: first grant (\d+) ms/.exec(e.what)?.[1])
      .filter(Boolean)
      .map(Number)
      .toSorted((a, b) => a - b)
    return ms.length
      ? `heal → first grant min ${ms[0]} / median ${ms[Math.floor((ms.length - 1) / 2)]} / max ${ms.at(-1)} ms over ${ms.length} heals`
      : 'no heal measured'
  },
})

faultRow({
  id: 'fault/server-sigstop/redis-single',
  fault: 'the Redis server SIGSTOPped for 2.5 s (past the 1.5 s lease), twice',
  backend: 'redis',
  mode: 'allowed',
  leaseMs: 1_500,
  durationMs: 8_500,
  setup: async (dir, ctx) => {
    ctx.server = await startRedis()
    return { provider: () => redisProvider(ctx.server.url) }
  },
  async faults(ctx) {
    for (const at of [1_500, 4_800]) {
      await ctx.at(at)
      ctx.server.pause()
      ctx.mark('sigstop')
      await sleep(2_500)
      ctx.server.resume()
      ctx.mark('sigcont')
    }
  },
  check: resumes('sigcont'),
})
faultRow({
  id: 'fault/server-restart-empty/redis-single',
  fault: 'the Redis server killed (kill -9) and restarted empty on its port, twice',
  backend: 'redis',
  mode: 'allowed',
  durationMs: 6_000,
  smoke: { durationMs: 5_000 },
  setup: async (dir, ctx) => {
    ctx.server = await startRedis()
    return { provider: () => redisProvider(ctx.server.url) }
  },
  async faults(ctx) {
    for (const at of [1_500, 3_500]) {
      await ctx.at(at)
      await ctx.server.restartEmpty()
      ctx.mark('restarted')
    }
  },
  check: resumes('restarted'),
})
for (const n of [3, 5]) {
  const minority = Math.floor((n - 1) / 2)
  faultRow({
    id: `fault/redlock-${n}-down/redis`,
    fault: `RedLock over ${n}: ${minority} server(s) killed, later a majority`,
    backend: `redis (redlock-${n})`,
    mode: 'strict',
    promise:
      PROMISE.strict +
      ` With ${minority} of ${n} down grants go on; with a majority down nothing is granted and calls fail within their budget.`,
    durationMs: 6_500,
    setup: async (dir, ctx) => {
      ctx.group = await startRedlock(n)
      return { provider: () => redisProvider(ctx.group.urls) }
    },
    async faults(ctx) {
      await ctx.at(1_500)
      for (const s of ctx.group.servers.slice(0, minority)) await s.kill9()
      ctx.mark('minority down')
      await ctx.at(4_000)
      for (const s of ctx.group.servers.slice(minority, Math.floor(n / 2) + 1)) await s.kill9()
      ctx.mark('majority down')
    },
    check(grants, events) {
      const minorityAt = lastEvent(events, 'minority down')
      const majorityAt = lastEvent(events, 'majority down')
      const out = []
      const between = grants.filter((g) => g.tGranted > minorityAt && g.tGranted < majorityAt).length
      if (between === 0) out.push(`no grant while only ${minority} of ${n} servers were down`)
      // 100 ms for a reply already on its way when the last server of the majority died.
      const late = grantsAfter(grants, majorityAt + 100e6)
      if (late > 0) out.push(`${late} grants with a majority of servers down`)
      return out
    },
  })
}
faultRow({
  id: 'fault/pg-terminate/postgres',
  fault: 'pg_terminate_backend of every client session, three times',
  backend: 'postgres (private cluster)',
  mode: 'session-end',
  durationMs: 6_000,
  smoke: { durationMs: 5_000 },
  setup: async (dir, ctx) => {
    ctx.pg = await shared.pgPrivate()
    return { provider: () => pgProvider(ctx.pg.url) }
  },
  async faults(ctx) {
    for (const at of [1_000, 2_500, 4_000]) {
      await ctx.at(at)
      const n = await ctx.pg.terminateAll()
      ctx.mark(`terminated ${n}`)
    }
  },
  check: resumes('terminated'),
})
faultRow({
  id: 'fault/pg-restart/postgres',
  fault: 'the private PostgreSQL cluster crashes and restarts (pg_ctl restart -m immediate)',
  backend: 'postgres (private cluster)',
  mode: 'session-end',
  durationMs: 7_000,
  setup: async (dir, ctx) => {
    ctx.pg = await shared.pgPrivate()
    return { provider: () => pgProvider(ctx.pg.url) }
  },
  async faults(ctx) {
    await ctx.at(2_000)
    ctx.mark('restarting')
    await ctx.pg.restart()
    ctx.mark('restarted')
  },
  check: resumes('restarted'),
})
for (const [topology, mode] of [
  ['redis-single', 'allowed'],
  ['redlock-3', 'allowed'],
  ['postgres', 'strict'],
  ['file', 'strict'],
]) {
  faultRow({
    id: `fault/holder-frozen/${topology}`,
    fault: 'a holder process SIGSTOPs itself mid-section for 2 s (past a 1 s lease), then SIGCONT; twice',
    backend: TOPOLOGIES[topology].backend + (topology.startsWith('redlock') ? ' (redlock-3)' : ''),
    mode,
    promise:
      mode === 'strict'
        ? PROMISE.strict + ' (No lease: the frozen holder keeps the lock.)'
        : PROMISE.allowed + ' The frozen holder’s first check on resuming is false.',
    leaseMs: 1_000,
    durationMs: 6_500,
    smoke: topology === 'redis-single' ? { durationMs: 6_500 } : null,
    setup: TOPOLOGIES[topology].setup,
    async faults(ctx) {
      for (const at of [1_000, 3_800]) {
        await ctx.at(at)
        const w = await ctx.freezeHolder()
        ctx.mark(w === null ? 'no holder froze' : `worker ${w} frozen`)
        if (w === null) continue
        await sleep(2_000)
        ctx.thaw(w)
        ctx.mark(`worker ${w} resumed`)
      }
    },
    check(grants, events, summaries) {
      const frozen = summaries.reduce((n, s) => n + (s.frozen ?? 0), 0)
      return frozen === 2 ? [] : [`${frozen} of 2 holders froze (the fault did not happen)`]
    },
  })
}
// MySQL: the server ends every client session; their locks are freed at once, and each holder
// learns it at its next probe.
faultRow({
  id: 'fault/kill-connection/mysql',
  fault: 'KILL CONNECTION of every client session, three times',
  backend: 'mysql (private server)',
  mode: 'session-end',
  graceMs: MYSQL_GRACE_MS,
  promise: PROMISE['session-end'].replace(
    `within ${SESSION_END_GRACE_MS} ms`,
    `within ${MYSQL_GRACE_MS} ms (two ${MYSQL_KEEPALIVE_MS} ms probe periods and ${SESSION_END_GRACE_MS} ms: the MySQL client learns it at its next probe)`,
  ),
  durationMs: 6_000,
  smoke: { durationMs: 5_000 },
  setup: async (dir, ctx) => {
    ctx.mysql = await shared.mysqlPrivate()
    const mysql = createRequire(join(ROOT, 'package.json'))('mysql2/promise')
    ctx.admin = await mysql.createConnection(ctx.mysql.url)
    onCleanup(() => ctx.admin.end())
    return { provider: () => ({ type: 'mysql', connectionString: ctx.mysql.url, keepaliveMs: MYSQL_KEEPALIVE_MS }) }
  },
  async faults(ctx) {
    for (const at of [1_000, 2_500, 4_000]) {
      await ctx.at(at)
      const [sessions] = await ctx.admin.query(
        "SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID() AND command <> 'Daemon' AND user = 'root'",
      )
      for (const { id } of sessions) await ctx.admin.query(`KILL CONNECTION ${id}`).catch(() => {})
      ctx.mark(`killed ${sessions.length}`)
    }
  },
  check: resumes('killed'),
})

// etcd: the leader of a private three-member cluster killed mid-run. Grants are decided by the
// cluster's consensus, so a leader change never hands a lock out twice: strict.
faultRow({
  id: 'fault/leader-kill/etcd-3',
  fault: 'kill -9 of the leader of a three-member etcd cluster',
  backend: 'etcd (3 members, private)',
  mode: 'strict',
  durationMs: 9_000,
  setup: async (dir, ctx) => {
    ctx.cluster = await startEtcdCluster(3)
    return { provider: () => ({ type: 'etcd', endpoints: ctx.cluster.endpoints }) }
  },
  async faults(ctx) {
    await ctx.at(2_000)
    const i = await ctx.cluster.leader()
    ctx.cluster.members[i].kill('SIGKILL')
    ctx.mark(`leader ${i} killed`)
  },
  check: resumes('leader'),
})
faultRow({
  id: 'fault/holder-frozen/etcd',
  fault: 'a holder process SIGSTOPs itself mid-section for 3 s (past its 2 s lease), then SIGCONT; twice',
  backend: 'etcd',
  mode: 'allowed',
  promise: PROMISE.allowed + ' The frozen holder’s first check on resuming is false.',
  leaseMs: 2_000,
  durationMs: 9_000,
  setup: TOPOLOGIES.etcd.setup,
  async faults(ctx) {
    for (const at of [1_000, 5_000]) {
      await ctx.at(at)
      const w = await ctx.freezeHolder()
      ctx.mark(w === null ? 'no holder froze' : `worker ${w} frozen`)
      if (w === null) continue
      await sleep(3_000)
      ctx.thaw(w)
      ctx.mark(`worker ${w} resumed`)
    }
  },
  check(grants, events, summaries) {
    const frozen = summaries.reduce((n, s) => n + (s.frozen ?? 0), 0)
    return frozen === 2 ? [] : [`${frozen} of 2 holders froze (the fault did not happen)`]
  },
})
faultRow({
  id: 'fault/lock-file-deleted/file',
  fault: 'the lock file deleted every 30 ms while processes hold and wait',
  backend: 'file',
  mode: 'allowed',
  durationMs: 6_000,
  smoke: { durationMs: 4_000 },
  setup: async (dir, ctx) => {
    ctx.locks = join(dir, 'locks')
    return { provider: () => ({ type: 'file', directory: ctx.locks }) }
  },
  async faults(ctx) {
    await ctx.at(1_000)
    let deleted = 0
    // Bounded: until a second before the workers stop, every 30 ms.
    while (ctx.elapsed() < ctx.durationMs - 1_000) {
      for (const f of existsSync(ctx.locks) ? readdirSync(ctx.locks) : []) {
        if (!f.endsWith('.lock')) continue
        try {
          unlinkSync(join(ctx.locks, f))
          deleted++
        } catch {}
      }
      await sleep(30)
    }
    ctx.mark(`deleted ${deleted} lock files`)
  },
  check(grants, events) {
    const n = Number(/deleted (\d+)/.exec(events.at(-1)?.what ?? '')?.[1] ?? 0)
    return n > 0 ? [] : ['no lock file was deleted (the fault did not happen)']
  },
})
faultRow({
  id: 'fault/sentinel-failover/redis',
  fault:
    'Sentinel failover: the replica, missing the lock keys (replication lag, simulated by FLUSHALL on it), is promoted (SENTINEL FAILOVER), the old master demoted',
  backend: 'redis (sentinel)',
  mode: 'allowed',
  // A release the old master answered but never replicated leaves its key on the promoted
  // replica until the lease ends: the row's lease is short so that service must resume in it.
  leaseMs: 2_000,
  durationMs: 8_000,
  setup: async (dir, ctx) => {
    ctx.group = await startSentinelGroup()
    return { provider: () => redisProvider(ctx.group.url) }
  },
  async faults(ctx) {
    await ctx.at(2_000)
    ctx.mark('failover')
    await ctx.group.replica.cli('FLUSHALL')
    await ctx.group.failover()
    ctx.mark('promoted')
  },
  check: resumes('promoted'),
})

// Single-process probes: budgets, riding out faults, orphans, lost handles.
function probeRow(row) {
  rows.push({ type: 'probe', primitive: 'mutex', ...row })
}
const settled = (r, bound) => r && r.outcome !== 'unsettled' && r.ms <= bound
const fmt = (r) => (r ? `${r.outcome} after ${Math.round(r.ms)} ms` : 'no result')

/** The faults a probe behind a proxy may ask for. */
const proxyFaults = (ctx) => ({
  delay: ({ ms }) => ctx.proxy.setMode('delay', ms),
  pass: () => ctx.proxy.setMode('pass'),
  blackhole: () => ctx.proxy.setMode('blackhole'),
  'reset-then-pass': async () => {
    ctx.proxy.setMode('reset')
    await sleep(100)
    ctx.proxy.setMode('pass')
  },
  'reset-500ms': async () => {
    ctx.proxy.setMode('reset')
    await sleep(500)
    ctx.proxy.setMode('pass')
  },
})
for (const backend of ['redis', 'postgres']) {
  const upstream = async () => (backend === 'redis' ? (await shared.redis()).port : urlPort((await shared.pg()).url))
  const conf = async (port) =>
    backend === 'redis'
      ? redisProvider(`redis://127.0.0.1:${port}`)
      : pgProvider(withPort((await shared.pg()).url, port))
  const proxiedSetup = async (ctx) => {
    const port = await upstream()
    ctx.proxy = await startProxy(port)
    return { direct: await conf(port), proxied: await conf(ctx.proxy.port) }
  }

  probeRow({
    id: `budget/slow-link/${backend}`,
    fault: 'a proxy delaying 200 ms each way; the name is held by another client',
    backend,
    promise: `acquire({ timeoutMs: 1000 }) rejects with LockTimeoutError by 1000 + ${BOUNDS.acquireSlackMs} ms.`,
    smoke: backend === 'redis',
    scenario: 'budget-delay',
    params: { delayMs: 200, timeoutMs: 1_000 },
    setup: proxiedSetup,
    faults: proxyFaults,
    check: (r) =>
      r.acquire?.outcome === 'ERR_LOCK_TIMEOUT' && r.acquire.ms <= 1_000 + BOUNDS.acquireSlackMs
        ? []
        : [`acquire: ${fmt(r.acquire)}`],
    outcome: (r) => `acquire: ${fmt(r.acquire)}`,
  })
  probeRow({
    id: `budget/partition/${backend}`,
    fault: 'a silent partition (proxy blackhole) after the connection is up',
    backend,
    promise: `tryAcquire() settles within ${callBound(backend)} ms, acquire({ timeoutMs: 1000 }) by 1000 + ${BOUNDS.acquireSlackMs} ms, release() within ${callBound(backend)} ms; none grants.`,
    smoke: backend === 'postgres',
    scenario: 'budget-blackhole',
    params: { timeoutMs: 1_000 },
    setup: proxiedSetup,
    faults: proxyFaults,
    check: (r) => [
      ...(settled(r.tryAcquire, callBound(backend)) && r.tryAcquire.outcome !== 'granted'
        ? []
        : [`tryAcquire: ${fmt(r.tryAcquire)}`]),
      ...(settled(r.acquire, 1_000 + BOUNDS.acquireSlackMs) && r.acquire.outcome !== 'granted'
        ? []
        : [`acquire: ${fmt(r.acquire)}`]),
      ...(settled(r.release, callBound(backend)) ? [] : [`release: ${fmt(r.release)}`]),
    ],
    outcome: (r) => `tryAcquire: ${fmt(r.tryAcquire)}; acquire: ${fmt(r.acquire)}; release: ${fmt(r.release)}`,
  })
  probeRow({
    id: `budget/never-answers/${backend}`,
    fault: 'a server that accepts connections and never answers (proxy blackhole from the start)',
    backend,
    promise: `tryAcquire() settles within ${callBound(backend)} ms and acquire({ timeoutMs: 1000 }) by 1000 + ${BOUNDS.acquireSlackMs} ms (no fixed connect timeout stretches a call).`,
    smoke: backend === 'redis',
    scenario: 'budget-never-answers',
    params: { timeoutMs: 1_000 },
    setup: proxiedSetup,
    faults: proxyFaults,
    check: (r) => [
      ...(settled(r.tryAcquire, callBound(backend)) ? [] : [`tryAcquire: ${fmt(r.tryAcquire)}`]),
      ...(settled(r.acquire, 1_000 + BOUNDS.acquireSlackMs) ? [] : [`acquire: ${fmt(r.acquire)}`]),
    ],
    outcome: (r) => `tryAcquire: ${fmt(r.tryAcquire)}; acquire: ${fmt(r.acquire)}`,
  })
  probeRow({
    id: `ride-out/connection-reset/${backend}`,
    fault: 'the waiter’s connections reset (RST) for 500 ms while it waits',
    backend,
    promise: 'A waiter with timeoutMs 60000 is not failed by the reset and is granted when the holder releases.',
    smoke: false,
    scenario: 'ride-out',
    params: { fault: 'reset-500ms' },
    setup: proxiedSetup,
    faults: proxyFaults,
    check: (r) => (r.waiter?.outcome === 'granted' ? [] : [`waiter: ${fmt(r.waiter)}`]),
    outcome: (r) => `waiter: ${fmt(r.waiter)}`,
  })
}
probeRow({
  id: 'ride-out/server-sigstop-1s/redis-single',
  fault: 'the Redis server SIGSTOPped for 1 s while a client waits',
  backend: 'redis',
  promise: 'A waiter with timeoutMs 60000 is not failed by the stall and is granted when the holder releases.',
  smoke: true,
  scenario: 'ride-out',
  params: { fault: 'sigstop-1s' },
  setup: async (ctx) => {
    ctx.server = await startRedis()
    return { direct: redisProvider(ctx.server.url) }
  },
  faults: (ctx) => ({
    'sigstop-1s': async () => {
      ctx.server.pause()
      await sleep(1_000)
      ctx.server.resume()
    },
  }),
  check: (r) => (r.waiter?.outcome === 'granted' ? [] : [`waiter: ${fmt(r.waiter)}`]),
  outcome: (r) => `waiter: ${fmt(r.waiter)}`,
})
probeRow({
  id: 'ride-out/restart/postgres',
  fault: 'the private PostgreSQL cluster crashes and restarts while a client waits',
  backend: 'postgres (private cluster)',
  promise:
    'A waiter with timeoutMs 60000 is not failed by the restart and is granted (the holder’s session died with it).',
  smoke: false,
  scenario: 'ride-out',
  params: { fault: 'pg-restart' },
  setup: async (ctx) => {
    ctx.pg = await shared.pgPrivate()
    return { direct: pgProvider(ctx.pg.url) }
  },
  faults: (ctx) => ({ 'pg-restart': () => ctx.pg.restart() }),
  check: (r) => (r.waiter?.outcome === 'granted' ? [] : [`waiter: ${fmt(r.waiter)}`]),
  outcome: (r) => `waiter: ${fmt(r.waiter)}`,
})
for (const topology of ['redis-single', 'redlock-3']) {
  probeRow({
    id: `no-orphans/server-sigstop/${topology}`,
    fault: 'acquires and tryAcquires sent to stopped (SIGSTOP) servers; the servers resume after the calls gave up',
    backend: topology === 'redlock-3' ? 'redis (redlock-3)' : 'redis',
    promise: `Every name those calls touched can be acquired within ${BOUNDS.orphanMs} ms after the servers resume, not after a 30 s lease.`,
    smoke: topology === 'redis-single',
    scenario: 'no-orphans',
    params: { orphanBoundMs: BOUNDS.orphanMs },
    setup: async (ctx) => {
      ctx.servers = topology === 'redlock-3' ? (await startRedlock(3)).servers : [await startRedis()]
      return { direct: redisProvider(ctx.servers.map((s) => s.url)) }
    },
    faults: (ctx) => ({
      sigstop: () => ctx.servers.forEach((s) => s.pause()),
      sigcont: () => ctx.servers.forEach((s) => s.resume()),
    }),
    check: (r) =>
      (r.after ?? []).every((a) => a.outcome === 'granted') && r.after?.length === 5
        ? []
        : [`after resuming: ${(r.after ?? []).map(fmt).join(', ')}`],
    outcome: (r) =>
      `during: ${(r.during ?? []).map((d) => d.outcome).join(',')}; after: ${(r.after ?? []).map(fmt).join(', ')}`,
  })
}
probeRow({
  id: 'lost-frees-name/flushall/redis-single',
  fault: 'the lock’s key disappears (FLUSHALL) so the handle is lost',
  backend: 'redis',
  promise: 'Once lost fires, the same process re-acquires the name (timeoutMs 2000) without calling release().',
  smoke: true,
  scenario: 'lost-frees-name',
  params: { fault: 'flush' },
  setup: async (ctx) => {
    ctx.server = await startRedis()
    return { direct: redisProvider(ctx.server.url, { leaseMs: 1_000, extendEveryMs: 300 }) }
  },
  faults: (ctx) => ({ flush: () => ctx.server.cli('FLUSHALL') }),
  check: (r) =>
    r.lost && r.reacquire?.outcome === 'granted'
      ? []
      : [r.lost ? `re-acquire: ${fmt(r.reacquire)}` : 'lost never fired'],
  outcome: (r) =>
    r.lost ? `lost after ${Math.round(r.lostAfterMs)} ms; re-acquire: ${fmt(r.reacquire)}` : 'lost never fired',
})
probeRow({
  id: 'lost-frees-name/terminate/postgres',
  fault: 'the holder’s session is ended (pg_terminate_backend) so the handle is lost',
  backend: 'postgres (private cluster)',
  promise: 'Once lost fires, the same process re-acquires the name (timeoutMs 2000) without calling release().',
  smoke: false,
  scenario: 'lost-frees-name',
  params: { fault: 'terminate' },
  setup: async (ctx) => {
    ctx.pg = await shared.pgPrivate()
    return { direct: pgProvider(ctx.pg.url) }
  },
  faults: (ctx) => ({ terminate: () => ctx.pg.terminateAll() }),
  check: (r) =>
    r.lost && r.reacquire?.outcome === 'granted'
      ? []
      : [r.lost ? `re-acquire: ${fmt(r.reacquire)}` : 'lost never fired'],
  outcome: (r) =>
    r.lost ? `lost after ${Math.round(r.lostAfterMs)} ms; re-acquire: ${fmt(r.reacquire)}` : 'lost never fired',
})

// ---------------------------------------------------------------------------------------------
// Running a row

// Fencing at the resource, per storage: torture/fencing.mjs.
rows.push(...(await import('./fencing.mjs')).fencingRows(shared))

const children = new Set()
function track(child) {
  children.add(child)
  child.on('exit', () => children.delete(child))
  return child
}
function killChildren() {
  for (const c of children) {
    try {
      process.kill(c.pid, 'SIGCONT')
      c.kill('SIGKILL')
    } catch {}
  }
}
onCleanup(killChildren)

const procState = (pid) => {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0]
  } catch {
    return null
  }
}

/** Exits with `{ code, signal }`, or kills the child after `ms` and says so. */
function exitWithin(child, ms) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return resolve({ code: child.exitCode, signal: child.signalCode, hung: false })
    }
    const timer = setTimeout(() => {
      try {
        process.kill(child.pid, 'SIGCONT')
      } catch {}
      child.kill('SIGKILL')
      resolve({ code: null, signal: 'SIGKILL', hung: true })
    }, ms)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, hung: false })
    })
  })
}

const rowName = (id) => `torture:${id}:${process.pid}:${Math.random().toString(36).slice(2, 8)}`

async function runWorkers(row) {
  const workers = SMOKE && row.smoke?.workers ? row.smoke.workers : row.workers
  const durationMs = SMOKE && row.smoke?.durationMs ? row.smoke.durationMs : row.durationMs
  const dir = mkdtempSync(join(tmpdir(), 'distlock-torture-'))
  mkdirSync(join(dir, 'markers'))
  writeFileSync(join(dir, 'counter'), '0')
  const t0 = process.hrtime.bigint()
  const ctx = {}
  const env = await row.setup(dir, ctx)
  const events = []
  const elapsed = () => Number(process.hrtime.bigint() - t0) / 1e6
  Object.assign(ctx, {
    durationMs,
    elapsed,
    at: (ms) => sleep(Math.max(0, ms - elapsed())),
    mark: (what) => events.push({ t: Number(process.hrtime.bigint() - t0), what }),
  })
  const name = rowName(row.id)
  const procs = []
  for (let i = 0; i < workers; i++) {
    const cfg = {
      index: i,
      provider: { leaseMs: row.leaseMs, ...env.provider(i) },
      primitive: row.primitive,
      name,
      maxCount: permitsOf(row),
      dir,
      out: join(dir, `w${i}.jsonl`),
      t0: String(t0),
      durationMs,
      timeoutMs: row.timeoutMs,
      steps: row.steps,
      stepMs: row.stepMs,
      readRatio: 0.7,
      leaseMs: row.leaseMs,
      callers: row.callers ?? 1,
      tryRatio: row.tryRatio ?? 0,
    }
    const child = spawn(process.execPath, [join(HERE, 'worker.mjs'), JSON.stringify(cfg)], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    })
    let stderr = ''
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)))
    procs.push({ child: track(child), stderr: () => stderr })
  }
  // Has one holder, whichever gets there first, stop itself mid-section; resolves to its index
  // once it is stopped (null if none did within 3 s).
  let rounds = 0
  ctx.freezeHolder = async () => {
    const round = ++rounds
    for (const p of procs) if (p.child.exitCode === null && p.child.connected) p.child.send({ freeze: round })
    const claim = join(dir, `freeze.${round}`)
    try {
      let stopped = -1
      await waitFor(
        () => {
          if (!existsSync(claim)) return false
          const pid = Number(readFileSync(claim, 'utf8'))
          stopped = procs.findIndex((p) => p.child.pid === pid)
          return stopped >= 0 && procState(pid) === 'T'
        },
        `a holder stopping itself`,
        3_000,
      )
      return stopped
    } catch {
      return null
    } finally {
      for (const p of procs) if (p.child.exitCode === null && p.child.connected) p.child.send({ freeze: null })
    }
  }
  ctx.thaw = (i) => {
    try {
      process.kill(procs[i].child.pid, 'SIGCONT')
    } catch {}
  }
  const faults = row.faults ? row.faults(ctx).catch((err) => ctx.mark(`fault failed: ${err.message}`)) : null
  const deadline = durationMs + row.timeoutMs + 20_000
  const exits = await Promise.all(procs.map((p) => exitWithin(p.child, deadline)))
  await faults
  const grants = []
  const summaries = []
  for (let i = 0; i < workers; i++) {
    const file = join(dir, `w${i}.jsonl`)
    if (!existsSync(file)) continue
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      if (!line) continue
      const rec = JSON.parse(line)
      if (rec.type === 'grant') grants.push({ ...rec, worker: i })
      else summaries.push({ ...rec, worker: i })
    }
  }
  const a = analyze(grants, {
    mode: row.mode === 'session-end' ? 'allowed' : row.mode,
    graceMs: row.mode === 'session-end' ? (row.graceMs ?? SESSION_END_GRACE_MS) : 0,
    maxCount: permitsOf(row),
  })
  const counter = Number(readFileSync(join(dir, 'counter'), 'utf8')) || 0
  const writes = grants.filter((g) => g.wrote).length
  const max = (key) => Math.max(0, ...summaries.map((s) => s[key] ?? 0))
  const m = {
    grants: grants.length,
    overlaps: a.overlaps,
    allowedOverlaps: a.allowedOverlaps,
    markerCollisions: a.markerCollisions,
    fencingViolations: a.fencingViolations,
    lostUpdates: writes - counter,
    lostSignals: a.lostSignals,
    maxAcquireSettleMs: Math.round(max('maxAcquireSettleMs')),
    maxAcquireOvershootMs: Math.round(max('maxAcquireOvershootMs')),
    maxReleaseMs: Math.round(max('maxReleaseMs')),
    acquireErrors: summaries.reduce((acc, s) => {
      for (const [k, v] of Object.entries(s.acquireErrors ?? {})) acc[k] = (acc[k] ?? 0) + v
      return acc
    }, {}),
  }
  const violations = []
  if (grants.length === 0) violations.push('no grants at all (the row proved nothing)')
  if (a.overlapViolations) violations.push(`${a.overlapViolations} overlaps that break the promise`)
  if (row.mode === 'strict' && a.markerCollisions) violations.push(`${a.markerCollisions} marker collisions`)
  if (a.fencingViolations) violations.push(`${a.fencingViolations} fencing violations`)
  if (m.lostUpdates !== 0 && row.mode !== 'session-end')
    violations.push(`${m.lostUpdates} lost updates (counter ${counter}, writes ${writes})`)
  if (row.noFault && a.lostSignals) violations.push(`${a.lostSignals} lost signals with no fault`)
  // Liveness: with no fault, contention alone never makes a worker wait out its 10 s timeout.
  if (row.noFault && m.acquireErrors.ERR_LOCK_TIMEOUT) {
    violations.push(`${m.acquireErrors.ERR_LOCK_TIMEOUT} acquires timed out with no fault (a stall)`)
  }
  const backendErrors = Object.entries(m.acquireErrors).filter(([code]) => code !== 'ERR_LOCK_TIMEOUT')
  if (row.noFault && backendErrors.length) {
    const first = summaries.find((s) => s.firstError)?.firstError
    violations.push(`acquire errors with no fault: ${backendErrors.map(([k, v]) => `${k}×${v}`).join(' ')} (${first})`)
  }
  if (m.maxAcquireOvershootMs > BOUNDS.workerSlackMs) {
    violations.push(
      `an acquire settled ${m.maxAcquireOvershootMs} ms after its timeoutMs (bound ${BOUNDS.workerSlackMs})`,
    )
  }
  if (m.maxReleaseMs > callBound(row.backend))
    violations.push(`a release took ${m.maxReleaseMs} ms (bound ${callBound(row.backend)})`)
  exits.forEach((e, i) => {
    if (e.hung)
      violations.push(
        `worker ${i} was still running ${Math.round(deadline / 1000)} s after its start (a call never settled)`,
      )
    else if (e.code !== 0)
      violations.push(`worker ${i} exited with ${e.code ?? e.signal}: ${procs[i].stderr().trim().slice(-300)}`)
  })
  for (const s of summaries) if (s.fatal) violations.push(`worker ${s.worker}: ${s.fatal.split('\n')[0]}`)
  for (const e of events) if (e.what.startsWith('fault failed')) violations.push(e.what)
  if (row.check) violations.push(...row.check(grants, events, summaries, a))
  violations.push(...a.examples.map((e) => `e.g. ${e}`))
  rmSync(dir, { recursive: true, force: true })
  const errs = Object.entries(m.acquireErrors)
    .map(([k, v]) => `${k}×${v}`)
    .join(' ')
  const outcome =
    `${m.grants} grants, ${m.overlaps} overlaps (${m.allowedOverlaps} allowed), ${m.fencingViolations} fencing violations, ` +
    `${m.lostUpdates} lost updates, ${m.lostSignals} lost signals; settle max ${m.maxAcquireSettleMs} ms ` +
    `(over budget ${Math.max(0, m.maxAcquireOvershootMs)} ms), release max ${m.maxReleaseMs} ms` +
    (errs ? `; acquire errors ${errs}` : '') +
    (row.summary ? `; ${row.summary(events)}` : '')
  return { metrics: m, events: events.map((e) => ({ ms: Math.round(e.t / 1e6), what: e.what })), violations, outcome }
}

/**
 * Runs one probe.mjs scenario (`cfg`) in a child process, carrying out the faults it asks for
 * with `handlers`; resolves to `{ exit, result, stderr }` (`result` undefined if it gave none).
 */
async function forkProbe(cfg, handlers) {
  const child = track(
    fork(join(HERE, 'probe.mjs'), [JSON.stringify(cfg)], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] }),
  )
  let stderr = ''
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)))
  let result
  child.on('message', async (msg) => {
    if (msg.result) result = msg.result
    if (msg.fault) {
      const handler = handlers[msg.fault]
      try {
        if (!handler) throw new Error(`no fault named ${msg.fault}`)
        await handler(msg)
      } catch (err) {
        result ??= { error: `fault ${msg.fault} failed: ${err.message}` }
      }
      if (child.connected) child.send({ done: msg.id })
    }
  })
  const exit = await exitWithin(child, 120_000)
  // Whatever happened, heal the faults this probe may have left on.
  for (const heal of ['pass', 'sigcont']) {
    try {
      await handlers[heal]?.({})
    } catch {}
  }
  return { exit, result, stderr }
}

async function runProbe(row) {
  const ctx = {}
  const env = await row.setup(ctx)
  const cfg = { scenario: row.scenario, name: rowName(row.id), ...env, ...row.params }
  const { exit, result, stderr } = await forkProbe(cfg, row.faults(ctx))
  const violations = []
  if (exit.hung) violations.push('the probe did not finish within 120 s')
  if (!result) {
    violations.push(`the probe gave no result (exit ${exit.code ?? exit.signal}): ${stderr.trim().slice(-300)}`)
    return { metrics: { grants: 0 }, violations, outcome: 'no result' }
  }
  if (result.error) {
    violations.push(result.error.split('\n')[0])
    return { metrics: { grants: result.grants ?? 0 }, violations, outcome: `error: ${result.error.split('\n')[0]}` }
  }
  if (!result.grants) violations.push('no grants at all (the row proved nothing)')
  violations.push(...row.check(result))
  return { metrics: { grants: result.grants ?? 0 }, result, violations, outcome: row.outcome(result) }
}

// ---------------------------------------------------------------------------------------------
// Main

function selected() {
  let list = rows
  if (SMOKE) list = list.filter((r) => r.smoke)
  if (ONLY) {
    let re = null
    try {
      re = new RegExp(ONLY)
    } catch {}
    list = list.filter((r) => r.id.includes(ONLY) || re?.test(r.id))
  }
  return list
}

const esc = (s) => String(s).replaceAll('|', '\\|').replaceAll('\n', ' ')

function markdown(results, meta) {
  const lines = [
    `# distlock torture results (${meta.smoke ? 'smoke' : 'full'} run)`,
    '',
    `${meta.date} · ${meta.node} · ${meta.passed}/${meta.total} rows kept their promise · ${Math.round(meta.elapsedMs / 1000)} s`,
    '',
    `Bounds: acquire slack ${BOUNDS.acquireSlackMs} ms (probes), ${BOUNDS.workerSlackMs} ms (many processes); ` +
      `tryAcquire and release: Redis ${callBound('redis')} ms, PostgreSQL, MySQL and etcd ${callBound('postgres')} ms; orphan ${BOUNDS.orphanMs} ms.`,
    '',
    '| row | fault | backend | promise | measured outcome | kept |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  for (const r of results) {
    const why = r.violations.length ? `<br>**broken:** ${r.violations.slice(0, 4).map(esc).join('; ')}` : ''
    lines.push(
      `| ${r.id} | ${esc(r.fault)} | ${esc(r.backend)} | ${esc(r.promise)} | ${esc(r.outcome)}${why} | ${r.ok ? 'yes' : '**no**'} |`,
    )
  }
  return lines.join('\n') + '\n'
}

async function main() {
  const list = selected()
  if (flag('--list')) {
    for (const r of list) console.log(`${r.id}\n  fault: ${r.fault}\n  promise: ${r.promise}`)
    return 0
  }
  if (list.length === 0) {
    console.error(`torture: no row matches ${ONLY}`)
    return 1
  }
  // The package must load before anything starts.
  try {
    createRequire(import.meta.url)('../')
  } catch (err) {
    console.error(`torture: cannot load distlock from ${ROOT} (run npm run build first): ${err.message}`)
    return 1
  }
  const started = performance.now()
  const results = []
  for (const row of list) {
    const base = { id: row.id, fault: row.fault, backend: row.backend, promise: row.promise }
    if (performance.now() - started > RUN_BUDGET_MS) {
      results.push({
        ...base,
        ok: false,
        outcome: 'not run',
        violations: ['not run: the run’s time budget was spent'],
        metrics: { grants: 0 },
      })
      continue
    }
    const t = performance.now()
    process.stdout.write(`torture: ${row.id} … `)
    let res
    try {
      res = row.run ? await row.run() : row.type === 'workers' ? await runWorkers(row) : await runProbe(row)
    } catch (err) {
      res = {
        metrics: { grants: 0 },
        violations: [`could not run: ${err.message}`],
        outcome: `setup failed: ${err.message}`,
      }
    }
    const ok = res.violations.length === 0
    results.push({ ...base, ok, seconds: Math.round((performance.now() - t) / 100) / 10, ...res })
    console.log(`${ok ? 'ok' : 'BROKEN'} (${Math.round(performance.now() - t)} ms)\n    ${res.outcome}`)
    for (const v of res.violations.slice(0, 6)) console.log(`    ! ${v}`)
  }
  const passed = results.filter((r) => r.ok).length
  const meta = {
    smoke: SMOKE,
    only: ONLY ?? null,
    date: new Date().toISOString(),
    node: process.version,
    bounds: BOUNDS,
    total: results.length,
    passed,
    elapsedMs: Math.round(performance.now() - started),
  }
  mkdirSync(OUT, { recursive: true })
  writeFileSync(join(OUT, `${BASENAME}.md`), markdown(results, meta))
  writeFileSync(join(OUT, `${BASENAME}.json`), JSON.stringify({ meta, results }, null, 2) + '\n')
  const totals = results.reduce(
    (t, r) => {
      for (const k of ['grants', 'overlaps', 'fencingViolations', 'lostUpdates', 'lostSignals'])
        t[k] += r.metrics?.[k] ?? 0
      t.maxOvershoot = Math.max(t.maxOvershoot, r.metrics?.maxAcquireOvershootMs ?? 0)
      return t
    },
    { grants: 0, overlaps: 0, fencingViolations: 0, lostUpdates: 0, lostSignals: 0, maxOvershoot: 0 },
  )
  console.log(
    `\ntorture: ${passed}/${results.length} rows kept their promise in ${Math.round(meta.elapsedMs / 1000)} s; ` +
      `${totals.grants} grants, ${totals.overlaps} overlaps, ${totals.fencingViolations} fencing violations, ` +
      `${totals.lostUpdates} lost updates, ${totals.lostSignals} lost signals, acquire settle over budget max ${totals.maxOvershoot} ms`,
  )
  console.log(`torture: results in ${join(OUT, `${BASENAME}.md`)}`)
  for (const r of results.filter((x) => !x.ok)) console.log(`  BROKEN ${r.id}: ${r.violations[0]}`)
  return passed === results.length ? 0 : 1
}

let exiting = false
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    if (exiting) return
    exiting = true
    console.error(`\ntorture: ${sig}: stopping workers and servers`)
    killChildren()
    await cleanupAll()
    process.exit(130)
  })
}

let code = 1
try {
  code = await main()
} catch (err) {
  console.error(`torture: ${err.stack ?? err}`)
} finally {
  killChildren()
  await cleanupAll()
}
process.exit(code)
