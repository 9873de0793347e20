#!/usr/bin/env node
// W1 (DESIGN.md §6) for the file backend: one loop, acquire+release of one name, one process.
//
//   node bench/w1-file.mjs [--quick] [--only=id,id] [--reps=N] [--seconds=S] [--allow-debug]
//
// Compares distlock's FileLockProvider with fs-ext (flock) and proper-lockfile (mkdir lock).
// Each case: warm-up, then a loop bounded by time AND by iteration count, repeated; cases are
// interleaved per repetition (rep 1 of every case, then rep 2, ...) so drift hits all alike.
// Every repetition runs on a lock file in a fresh temp dir.
//
// distlock's native binary: set NAPI_RS_NATIVE_LIBRARY_PATH to a release build. If unset, the
// private copy bench/.cache/distlock.linux-x64-gnu.node is used when present (see
// bench/README.md). The bench refuses a debug build unless --allow-debug.

import { createRequire } from 'node:module'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, '..')
const require = createRequire(path.join(root, 'package.json'))

// ---------------------------------------------------------------- options
const argv = process.argv.slice(2)
const flag = (name) => argv.includes(`--${name}`)
const opt = (name) => {
  const a = argv.find((x) => x.startsWith(`--${name}=`))
  return a === undefined ? undefined : a.slice(name.length + 3)
}
const QUICK = flag('quick')
const REPS = Number(opt('reps') ?? (QUICK ? 2 : 5))
const RUN_S = Number(opt('seconds') ?? (QUICK ? 0.5 : 3))
const WARMUP_S = QUICK ? 0.1 : 0.5
const WARMUP_MAX_ITERS = 20_000
const MAX_ITERS = QUICK ? 1_000_000 : 5_000_000 // upper bound per repetition
const ONLY = opt('only')?.split(',')
if (!(REPS >= 1 && REPS <= 50) || !(RUN_S > 0 && RUN_S <= 60)) {
  console.error('bad --reps (1..50) or --seconds (0..60]')
  process.exit(2)
}

// ---------------------------------------------------------------- distlock binary
const defaultNative = path.join(here, '.cache', 'distlock.linux-x64-gnu.node')
if (!process.env.NAPI_RS_NATIVE_LIBRARY_PATH && fs.existsSync(defaultNative)) {
  process.env.NAPI_RS_NATIVE_LIBRARY_PATH = defaultNative
}
const distlock = require(root) // dist/index.js -> native.cjs (honours the env var)
const fsExt = require('fs-ext')
const lockfile = require('proper-lockfile')

/** Which distlock .node file the process really mapped, and what kind of build it is. */
function nativeInfo() {
  const maps = fs.readFileSync('/proc/self/maps', 'utf8')
  const loaded = [
    ...new Set(
      maps
        .split('\n')
        .map((l) => l.split(/\s+/)[5])
        .filter((p) => p && /distlock[^/]*\.node$/.test(p)),
    ),
  ]
  const file = loaded[0]
  const info = { envOverride: process.env.NAPI_RS_NATIVE_LIBRARY_PATH ?? null, loaded }
  if (!file) return info
  const st = fs.statSync(file)
  const buf = fs.readFileSync(file)
  let fileCmd = null
  try {
    fileCmd = execFileSync('file', ['-b', file], { encoding: 'utf8', timeout: 10_000 }).trim()
  } catch {}
  // The release profile strips symbols and has no DWARF; a debug build has a .debug_info section.
  const sections = elfSections(buf)
  const hasDebugInfo = sections ? sections.includes('.debug_info') : null
  return {
    ...info,
    path: file,
    size: st.size,
    mtime: st.mtime.toISOString(),
    sha256: createHash('sha256').update(buf).digest('hex'),
    file: fileCmd,
    sections: sections?.filter((n) => n.startsWith('.debug') || n === '.symtab'),
    build: hasDebugInfo === null ? 'unknown' : hasDebugInfo ? 'debug' : 'release',
  }
}

/** Section names of a 64-bit little-endian ELF file, or null if it is not one. */
function elfSections(buf) {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2 || buf[5] !== 1) return null
  const shoff = Number(buf.readBigUInt64LE(0x28))
  const shentsize = buf.readUInt16LE(0x3a)
  const shnum = buf.readUInt16LE(0x3c)
  const shstrndx = buf.readUInt16LE(0x3e)
  if (shoff === 0 || shnum === 0 || shoff + shnum * shentsize > buf.length) return null
  const strOff = Number(buf.readBigUInt64LE(shoff + shstrndx * shentsize + 0x18))
  const names = []
  for (let i = 0; i < shnum; i++) {
    const nameOff = buf.readUInt32LE(shoff + i * shentsize)
    const start = strOff + nameOff
    names.push(buf.toString('latin1', start, buf.indexOf(0, start)))
  }
  return names
}

// ---------------------------------------------------------------- cases
// A case: setup(dir) -> { cycle, teardown, check? }. cycle is sync or async (kind says which).
const CASES = [
  {
    id: 'distlock',
    label: 'distlock acquire()+release()',
    kind: 'async',
    async setup(dir) {
      const p = new distlock.FileLockProvider({ directory: dir })
      const lock = p.createLock('w1')
      return {
        async cycle() {
          const h = await lock.acquire()
          await h.release()
        },
        async check() {
          const h = await lock.acquire()
          // The file is <sanitized name>-<sha1 prefix>.lock; find it rather than re-derive it.
          const files = fs.readdirSync(dir).filter((f) => f.startsWith('w1-') && f.endsWith('.lock'))
          if (files.length !== 1) throw new Error(`expected one lock file in ${dir}, found ${files}`)
          const excl = flockExcludes(path.join(dir, files[0]))
          await h.release()
          return excl
        },
        teardown: () => p.close(),
      }
    },
  },
  {
    id: 'distlock-try',
    label: 'distlock tryAcquire()+release()',
    kind: 'async',
    async setup(dir) {
      const p = new distlock.FileLockProvider({ directory: dir })
      const lock = p.createLock('w1')
      return {
        async cycle() {
          const h = await lock.tryAcquire()
          if (h === null) throw new Error('tryAcquire returned null on an uncontended lock')
          await h.release()
        },
        teardown: () => p.close(),
      }
    },
  },
  {
    id: 'fsext-async',
    label: 'fs-ext flock(fd,ex/un,cb), fd kept open',
    kind: 'async',
    async setup(dir) {
      const file = path.join(dir, 'w1.lock')
      const fd = fs.openSync(file, 'a+')
      const flock = (mode) =>
        new Promise((resolve, reject) => fsExt.flock(fd, mode, (err) => (err ? reject(err) : resolve())))
      return {
        async cycle() {
          await flock('ex')
          await flock('un')
        },
        async check() {
          await flock('ex')
          const excl = flockExcludes(file)
          await flock('un')
          return excl
        },
        teardown: () => fs.closeSync(fd),
      }
    },
  },
  {
    id: 'fsext-sync',
    label: 'fs-ext flockSync(fd,ex/un), fd kept open',
    kind: 'sync',
    async setup(dir) {
      const file = path.join(dir, 'w1.lock')
      const fd = fs.openSync(file, 'a+')
      return {
        cycle() {
          fsExt.flockSync(fd, 'ex')
          fsExt.flockSync(fd, 'un')
        },
        async check() {
          fsExt.flockSync(fd, 'ex')
          const excl = flockExcludes(file)
          fsExt.flockSync(fd, 'un')
          return excl
        },
        teardown: () => fs.closeSync(fd),
      }
    },
  },
  {
    // Same OS work per cycle as distlock (open, lock, close), minus the fencing counter.
    id: 'fsext-sync-open',
    label: 'fs-ext openSync+flockSync(ex)+closeSync',
    kind: 'sync',
    async setup(dir) {
      const file = path.join(dir, 'w1.lock')
      return {
        cycle() {
          const fd = fs.openSync(file, 'a+')
          fsExt.flockSync(fd, 'ex')
          fs.closeSync(fd)
        },
        teardown() {},
      }
    },
  },
  {
    id: 'plf-async',
    label: 'proper-lockfile lock()+unlock() {realpath:false}',
    kind: 'async',
    async setup(dir) {
      const file = path.join(dir, 'w1')
      const o = { realpath: false }
      return {
        async cycle() {
          await lockfile.lock(file, o)
          await lockfile.unlock(file, o)
        },
        async check() {
          await lockfile.lock(file, o)
          const held = lockfile.checkSync(file, o)
          let rejected = false
          await lockfile.lock(file, o).catch((e) => (rejected = e.code === 'ELOCKED'))
          await lockfile.unlock(file, o)
          return held && rejected
        },
        teardown() {},
      }
    },
  },
  {
    id: 'plf-sync',
    label: 'proper-lockfile lockSync()+unlockSync() {realpath:false}',
    kind: 'sync',
    async setup(dir) {
      const file = path.join(dir, 'w1')
      const o = { realpath: false }
      return {
        cycle() {
          lockfile.lockSync(file, o)
          lockfile.unlockSync(file, o)
        },
        teardown() {},
      }
    },
  },
].filter((c) => !ONLY || ONLY.includes(c.id))

/** True if another open file description cannot flock `file` right now (i.e. it is held). */
function flockExcludes(file) {
  const fd = fs.openSync(file, 'a+')
  try {
    fsExt.flockSync(fd, 'exnb')
    fsExt.flockSync(fd, 'un')
    return false
  } catch (e) {
    if (e.code === 'EAGAIN' || e.code === 'EWOULDBLOCK') return true
    throw e
  } finally {
    fs.closeSync(fd)
  }
}

/** Whole-machine CPU counters from /proc/stat (clock ticks), to spot other load and steal. */
function machineCpu() {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    const [user, nice, system, idle, iowait, irq, softirq, steal] = f
    return { busy: user + nice + system + irq + softirq, idle: idle + iowait, steal: steal ?? 0 }
  } catch {
    return null
  }
}

// ---------------------------------------------------------------- loops
let CLK_TCK = 100
try {
  CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 10_000 })) || 100
} catch {}
const lat = new Float64Array(MAX_ITERS) // ns per cycle, reused by every repetition
const hr = process.hrtime.bigint

/** Runs `cycle` until `seconds` elapse or `maxIters` cycles; fills lat[0..n). */
async function runAsync(cycle, seconds, maxIters) {
  const start = hr()
  const end = start + BigInt(Math.round(seconds * 1e9))
  let n = 0
  let t0 = start
  while (n < maxIters) {
    await cycle()
    const t1 = hr()
    lat[n++] = Number(t1 - t0)
    t0 = t1
    if (t1 >= end) break
  }
  return { n, ns: Number(t0 - start) }
}

function runSync(cycle, seconds, maxIters) {
  const start = hr()
  const end = start + BigInt(Math.round(seconds * 1e9))
  let n = 0
  let t0 = start
  while (n < maxIters) {
    cycle()
    const t1 = hr()
    lat[n++] = Number(t1 - t0)
    t0 = t1
    if (t1 >= end) break
  }
  return { n, ns: Number(t0 - start) }
}

function pct(sorted, p) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}
const median = (xs) => {
  const s = xs.toSorted((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

async function oneRep(c, rep) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `distlock-w1-${c.id}-`))
  const run = c.kind === 'sync' ? runSync : async (f, s, m) => runAsync(f, s, m)
  const inst = await c.setup(dir)
  try {
    let checked = null
    if (rep === 0 && inst.check) {
      checked = await inst.check()
      if (!checked) throw new Error(`${c.id}: sanity check failed: the lock did not exclude`)
    }
    await run(inst.cycle, WARMUP_S, WARMUP_MAX_ITERS)
    globalThis.gc?.()
    const m0 = machineCpu()
    const cpu0 = process.cpuUsage()
    const { n, ns } = await run(inst.cycle, RUN_S, MAX_ITERS)
    const cpu = process.cpuUsage(cpu0)
    const m1 = machineCpu()
    // Cores busy machine-wide during the run, and how many of them were not this process.
    let machine = null
    if (m0 && m1) {
      const tick = 1e6 / CLK_TCK // µs per clock tick
      const busyCores = ((m1.busy - m0.busy) * tick) / (ns / 1e3)
      machine = {
        busyCores,
        otherBusyCores: busyCores - (cpu.user + cpu.system) / (ns / 1e3),
        stealCores: ((m1.steal - m0.steal) * tick) / (ns / 1e3),
      }
    }
    const sorted = lat.subarray(0, n).toSorted()
    return {
      rep,
      ops: n,
      elapsedNs: ns,
      hitIterationCap: n >= MAX_ITERS,
      opsPerSec: n / (ns / 1e9),
      latencyUs: {
        min: sorted[0] / 1e3,
        p50: pct(sorted, 50) / 1e3,
        p90: pct(sorted, 90) / 1e3,
        p99: pct(sorted, 99) / 1e3,
        p999: pct(sorted, 99.9) / 1e3,
        max: sorted[n - 1] / 1e3,
        mean: ns / n / 1e3,
      },
      cpu: {
        userUs: cpu.user,
        systemUs: cpu.system,
        usPerOp: (cpu.user + cpu.system) / n,
        userUsPerOp: cpu.user / n,
        systemUsPerOp: cpu.system / n,
        utilization: (cpu.user + cpu.system) / (ns / 1e3), // >1 means more than one core busy
      },
      machine,
      sanityCheck: checked,
    }
  } finally {
    await inst.teardown()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------- main
const native = nativeInfo()
if (native.build !== 'release' && !flag('allow-debug')) {
  console.error(`distlock native binary is not a release build: ${JSON.stringify(native, null, 2)}`)
  console.error('Build release (see bench/README.md) or pass --allow-debug.')
  process.exit(1)
}

const git = (...a) => {
  try {
    return execFileSync('git', a, { cwd: root, encoding: 'utf8', timeout: 10_000 }).trim()
  } catch {
    return null
  }
}
const pkgVersion = (name) => require(`${name}/package.json`).version
let tmpFs = null
try {
  tmpFs = execFileSync('df', ['-T', os.tmpdir()], { encoding: 'utf8', timeout: 10_000 })
    .trim()
    .split('\n')[1]
    .split(/\s+/)[1]
} catch {}

const env = {
  date: new Date().toISOString(),
  node: process.version,
  v8: process.versions.v8,
  platform: `${process.platform} ${os.release()} ${process.arch}`,
  cpu: os.cpus()[0]?.model,
  cpus: os.cpus().length,
  loadavg: os.loadavg(),
  tmpdir: os.tmpdir(),
  tmpFs,
  gitHead: git('rev-parse', 'HEAD'),
  gitDirty: git('status', '--porcelain', '--', 'ts', 'crates') || '',
  distIndexMtime: fs.statSync(path.join(root, 'dist', 'index.js')).mtime.toISOString(),
  versions: { 'fs-ext': pkgVersion('fs-ext'), 'proper-lockfile': pkgVersion('proper-lockfile') },
  distlockNative: native,
}
const config = {
  quick: QUICK,
  reps: REPS,
  runSeconds: RUN_S,
  warmupSeconds: WARMUP_S,
  warmupMaxIters: WARMUP_MAX_ITERS,
  maxItersPerRep: MAX_ITERS,
  interleaved: true,
}

console.log(
  `W1 file: ${REPS} reps x ${RUN_S}s (cap ${MAX_ITERS} iters), warm-up ${WARMUP_S}s; node ${process.version}, ${env.cpus}x ${env.cpu}`,
)
console.log(`distlock native: ${native.build} ${native.path} (mtime ${native.mtime}, ${native.size} B)`)

const results = Object.fromEntries(CASES.map((c) => [c.id, { label: c.label, kind: c.kind, reps: [] }]))
for (let rep = 0; rep < REPS; rep++) {
  for (const c of CASES) {
    const r = await oneRep(c, rep)
    results[c.id].reps.push(r)
    console.log(
      `  rep ${rep + 1}/${REPS} ${c.id.padEnd(16)} ${r.opsPerSec.toFixed(0).padStart(9)} ops/s  p50 ${r.latencyUs.p50.toFixed(2)} µs  p99 ${r.latencyUs.p99.toFixed(2)} µs  cpu ${r.cpu.usPerOp.toFixed(2)} µs/op (${r.cpu.utilization.toFixed(2)} cores; other load ${r.machine?.otherBusyCores.toFixed(2)} cores)${r.hitIterationCap ? '  (iteration cap hit)' : ''}`,
    )
  }
}

for (const r of Object.values(results)) {
  r.summary = {
    medianOpsPerSec: median(r.reps.map((x) => x.opsPerSec)),
    minOpsPerSec: Math.min(...r.reps.map((x) => x.opsPerSec)),
    maxOpsPerSec: Math.max(...r.reps.map((x) => x.opsPerSec)),
    medianP50Us: median(r.reps.map((x) => x.latencyUs.p50)),
    medianP99Us: median(r.reps.map((x) => x.latencyUs.p99)),
    medianCpuUsPerOp: median(r.reps.map((x) => x.cpu.usPerOp)),
  }
}
const base = results.distlock?.summary
for (const r of Object.values(results)) {
  if (base) r.summary.distlockOverThis = base.medianOpsPerSec / r.summary.medianOpsPerSec
}

// ---------------------------------------------------------------- table
const rows = Object.entries(results).map(([id, r]) => [
  id,
  r.label,
  r.summary.medianOpsPerSec.toFixed(0),
  `${r.summary.minOpsPerSec.toFixed(0)}..${r.summary.maxOpsPerSec.toFixed(0)}`,
  r.summary.medianP50Us.toFixed(2),
  r.summary.medianP99Us.toFixed(2),
  r.summary.medianCpuUsPerOp.toFixed(2),
  base ? r.summary.distlockOverThis.toFixed(3) : '-',
])
const head = ['id', 'what', 'ops/s (median)', 'ops/s min..max', 'p50 µs', 'p99 µs', 'CPU µs/op', 'distlock÷this ops/s']
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
const line = (cells) => `| ${cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`
console.log()
console.log(line(head))
console.log(`|${widths.map((w, i) => (i < 2 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`)
for (const r of rows) console.log(line(r))
console.log(
  `\n${REPS} repetitions per case; p50/p99/CPU are medians of the per-repetition values. distlock÷this > 1: distlock is faster.`,
)

const outDir = path.join(here, 'results')
fs.mkdirSync(outDir, { recursive: true })
const stamp = env.date.replace(/[:.]/g, '-')
const out = path.join(outDir, `w1-file-${stamp}${QUICK ? '-quick' : ''}.json`)
fs.writeFileSync(out, `${JSON.stringify({ workload: 'W1', backend: 'file', config, env, results }, null, 2)}\n`)
console.log(`raw results: ${path.relative(root, out)}`)
