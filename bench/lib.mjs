// What the backend benchmarks share: options, the in-process loop runner (W1, W2, W3), the
// multi-process runner (W4), medians, the results table and the raw-results file.
//
// A case is { id, label, make(workload, loops) -> { loops: [acquire() -> release()], close() } }:
// one acquire function per loop; W2 gives each loop its own name, W1/W3/W4 share one.
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const here = path.dirname(fileURLToPath(import.meta.url))
export const root = path.resolve(here, '..')

const argv = process.argv.slice(2)
export const opt = (name) => argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3)
export const QUICK = argv.includes('--quick')
export const REPS = Number(opt('reps') ?? (QUICK ? 1 : 3))
export const RUN_S = Number(opt('seconds') ?? (QUICK ? 0.3 : 3))
export const ONLY = opt('only')?.split(',')
const MAX_ITERS = 2_000_000
export const LOOPS = { W1: 1, W2: 64, W3: 16, W4: 1 }
export const W4_PROCESSES = 4

let nameSeq = 0
export const freshName = (w) => `bench-${w}-${process.pid}-${Date.now()}-${nameSeq++}`

export function pct(sorted, p) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

export const median = (xs) => {
  const s = xs.filter((x) => x !== null && !Number.isNaN(x)).toSorted((a, b) => a - b)
  if (s.length === 0) return null
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

const yieldOnce = () => new Promise((r) => setImmediate(r))

/** A distlock provider as a bench instance: one loop per name, acquire() then release(). */
export function providerLoops(provider, names) {
  return {
    loops: names.map((n) => {
      const lock = provider.createLock(n)
      return async () => {
        const h = await lock.acquire()
        return () => h.release()
      }
    }),
    close: () => provider.close(),
  }
}

/**
 * Runs the loops of one instance for RUN_S seconds after a short warm-up. On a shared name it
 * checks mutual exclusion in process, and records who acquired after whom (same-owner %) and
 * the handoff: from the start of one loop's release to the next loop's grant.
 */
export async function runLoops(inst, { shared }) {
  const loops = inst.loops.length
  let deadline = performance.now() + Math.min(300, RUN_S * 250)
  const stop = () => performance.now() >= deadline
  await Promise.all(
    inst.loops.map(async (acquire) => {
      for (let i = 0; i < 2000 && !stop(); i++) await (await acquire())()
    }),
  )
  const lat = []
  const handoff = []
  const perLoop = Array.from({ length: loops }, () => 0)
  let inside = 0
  let violations = 0
  let lastOwner = -1
  let lastRelease = 0
  let sameOwner = 0
  let total = 0
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  deadline = t0 + RUN_S * 1000
  await Promise.all(
    inst.loops.map(async (acquire, id) => {
      while (!stop() && total < MAX_ITERS) {
        const s = performance.now()
        const release = await acquire()
        const got = performance.now()
        lat.push((got - s) * 1000)
        if (shared) {
          if (++inside !== 1) violations++
          if (lastOwner === id) sameOwner++
          else if (lastOwner !== -1) handoff.push((got - lastRelease) * 1000)
          lastOwner = id
        }
        perLoop[id]++
        total++
        await yieldOnce() // the critical section yields once
        if (shared) {
          inside--
          lastRelease = performance.now()
        }
        await release()
      }
    }),
  )
  const secs = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  lat.sort((a, b) => a - b)
  handoff.sort((a, b) => a - b)
  return {
    ops: total,
    opsPerSec: total / secs,
    p50Us: pct(lat, 50),
    p99Us: pct(lat, 99),
    handoffP50Us: shared && loops > 1 ? pct(handoff, 50) : null,
    handoffP99Us: shared && loops > 1 ? pct(handoff, 99) : null,
    cpuUsPerOp: (cpu.user + cpu.system) / total,
    violations,
    sameOwnerPct: shared && loops > 1 ? (100 * sameOwner) / Math.max(1, total - 1) : null,
    perLoopMin: Math.min(...perLoop),
    perLoopMax: Math.max(...perLoop),
  }
}

/**
 * W4: W4_PROCESSES processes of `script --child=<case>` on one name. They share a state file
 * (last owner, last release time, written inside the critical section) and an exclusive marker
 * file (created with O_EXCL on entry: a second process inside makes the create fail, a violation).
 */
export async function runProcesses(script, caseId, extraArgs) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'distlock-w4-'))
  const name = freshName('W4')
  const start = Date.now() + (QUICK ? 500 : 1500)
  const kids = Array.from({ length: W4_PROCESSES }, (_, id) => {
    const child = spawn(
      process.execPath,
      [
        script,
        `--child=${caseId}`,
        `--id=${id}`,
        `--dir=${dir}`,
        `--name=${name}`,
        `--start=${start}`,
        `--seconds=${RUN_S}`,
        ...extraArgs,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    )
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    return new Promise((resolve, reject) =>
      child.on('exit', (code) =>
        code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`W4 child ${id} exited ${code}`)),
      ),
    )
  })
  const parts = await Promise.all(kids)
  fs.rmSync(dir, { recursive: true, force: true })
  const lat = parts.flatMap((p) => p.lat).toSorted((a, b) => a - b)
  const handoff = parts.flatMap((p) => p.handoff).toSorted((a, b) => a - b)
  const total = parts.reduce((a, p) => a + p.ops, 0)
  const secs = Math.max(...parts.map((p) => p.secs))
  return {
    ops: total,
    opsPerSec: total / secs,
    p50Us: pct(lat, 50),
    p99Us: pct(lat, 99),
    handoffP50Us: pct(handoff, 50),
    handoffP99Us: pct(handoff, 99),
    cpuUsPerOp: parts.reduce((a, p) => a + p.cpuUs, 0) / total,
    violations: parts.reduce((a, p) => a + p.violations, 0),
    sameOwnerPct: (100 * parts.reduce((a, p) => a + p.sameOwner, 0)) / Math.max(1, total - 1),
    perLoopMin: Math.min(...parts.map((p) => p.ops)),
    perLoopMax: Math.max(...parts.map((p) => p.ops)),
  }
}

/** Milliseconds on a clock the processes of one machine share. */
const now = () => performance.timeOrigin + performance.now()

/**
 * Runs in-process loops in a child process (`script --isolated=<case> --workload=W`), for cases
 * that can hang their process (fs-ext's async flock exhausts libuv's thread pool under
 * contention): a child that does not finish in time is killed and the cell reports a stall.
 */
export async function runIsolated(script, caseId, w, extraArgs) {
  const child = spawn(
    process.execPath,
    [script, `--isolated=${caseId}`, `--workload=${w}`, `--seconds=${RUN_S}`, ...extraArgs],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  const limit = RUN_S * 1000 + 15_000
  const code = await new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), limit)
    child.on('exit', (c) => (clearTimeout(timer), resolve(c)))
  })
  if (code === 0 && out) return JSON.parse(out)
  return {
    ops: 0,
    opsPerSec: 0,
    p50Us: null,
    p99Us: null,
    handoffP50Us: null,
    handoffP99Us: null,
    cpuUsPerOp: null,
    violations: 0,
    sameOwnerPct: null,
    perLoopMin: 0,
    perLoopMax: 0,
    stalled: true,
  }
}

/** The child side of runProcesses: one loop of `acquire`, then prints its stats as JSON. */
export async function childLoop(acquire) {
  const id = Number(opt('id'))
  const dir = opt('dir')
  const start = Number(opt('start'))
  const marker = path.join(dir, 'inside')
  const stateFile = path.join(dir, 'state')
  while (now() < start) await (await acquire())() // warm-up until everyone starts together
  const lat = []
  const handoff = []
  let ops = 0
  let violations = 0
  let sameOwner = 0
  const cpu0 = process.cpuUsage()
  const t0 = now()
  const end = t0 + RUN_S * 1000
  while (now() < end && ops < MAX_ITERS) {
    const s = now()
    const release = await acquire()
    const got = now()
    lat.push((got - s) * 1000)
    let fd
    try {
      fd = fs.openSync(marker, 'wx')
    } catch {
      violations++
    }
    let state = ''
    try {
      state = fs.readFileSync(stateFile, 'utf8')
    } catch {}
    const [owner, released] = state.split(',')
    if (owner !== undefined && owner !== '') {
      if (Number(owner) === id) sameOwner++
      else handoff.push((got - Number(released)) * 1000)
    }
    ops++
    await yieldOnce()
    if (fd !== undefined) {
      fs.closeSync(fd)
      fs.unlinkSync(marker)
    }
    fs.writeFileSync(stateFile, `${id},${now()}`)
    await release()
  }
  const cpu = process.cpuUsage(cpu0)
  process.stdout.write(
    JSON.stringify({
      ops,
      secs: (now() - t0) / 1000,
      lat,
      handoff,
      violations,
      sameOwner,
      cpuUs: cpu.user + cpu.system,
    }),
  )
}

/** The medians of one cell's repetitions. */
export function summarize(w, c, rs) {
  const m = (k) => median(rs.map((x) => x[k]))
  return {
    workload: w,
    id: c.id,
    label: c.label,
    group: c.group,
    reps: rs,
    opsPerSec: m('opsPerSec'),
    p50Us: m('p50Us'),
    p99Us: m('p99Us'),
    handoffP99Us: m('handoffP99Us'),
    cpuUsPerOp: m('cpuUsPerOp'),
    violations: rs.reduce((a, x) => a + x.violations, 0),
    stalls: rs.filter((x) => x.stalled).length,
    sameOwnerPct: m('sameOwnerPct'),
    perLoop: `${m('perLoopMin')}..${m('perLoopMax')}`,
  }
}

const fmt = (x, digits = 0) => (x === null || x === undefined ? '–' : x.toFixed(digits))

/** Prints the markdown table: per row, distlock's ops/s divided by this row's (same workload and group). */
export function printTable(results) {
  console.log(
    '| workload | library | ops/s | distlock ÷ this | p50 µs | p99 µs | handoff p99 µs | CPU µs/op | same-owner % | per-loop min..max | violations |',
  )
  console.log('| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |')
  for (const r of results) {
    const base = results.find((x) => x.workload === r.workload && x.group === r.group && x.id.startsWith('distlock'))
    const ratio = base ? (base.opsPerSec / r.opsPerSec).toFixed(2) : '–'
    const multi = LOOPS[r.workload] > 1 || r.workload === 'W4'
    console.log(
      `| ${r.workload} | ${r.label} | ${fmt(r.opsPerSec)} | ${ratio} | ${fmt(r.p50Us)} | ${fmt(r.p99Us)} | ${fmt(r.handoffP99Us)} | ${fmt(r.cpuUsPerOp, 1)} | ${fmt(r.sameOwnerPct, 1)} | ${multi ? r.perLoop : '–'} | ${r.violations}${r.stalls ? ` (${r.stalls} of ${r.reps.length} reps stalled)` : ''} |`,
    )
  }
}

/** Writes the raw results to bench/results/<tag>-<time>[-quick].json and returns the path. */
export function saveResults(tag, data) {
  const out = path.join(
    here,
    'results',
    `${tag}-${new Date().toISOString().replaceAll(':', '-')}${QUICK ? '-quick' : ''}.json`,
  )
  fs.mkdirSync(path.dirname(out), { recursive: true })
  fs.writeFileSync(
    out,
    JSON.stringify(
      { date: new Date().toISOString(), node: process.version, reps: REPS, seconds: RUN_S, ...data },
      null,
      2,
    ),
  )
  return path.relative(root, out)
}

/** distlock's acquire and release scripts (Lua text), from `cargo run --example scripts`; null if it fails. */
export function distlockScripts() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'distlock-scripts-'))
  const res = spawnSync(
    'cargo',
    ['run', '-q', '--release', '-p', 'distlock-redis', '--example', 'scripts', '--', dir],
    {
      cwd: root,
      stdio: ['ignore', 'ignore', 'inherit'],
      timeout: 600_000,
    },
  )
  if (res.status !== 0) return null
  return {
    acquire: fs.readFileSync(path.join(dir, 'acquire.lua'), 'utf8'),
    release: fs.readFileSync(path.join(dir, 'release.lua'), 'utf8'),
  }
}
