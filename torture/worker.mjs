// One contending process of the torture suite. For `durationMs` it loops: acquire (mutex, read,
// write or a semaphore permit) → mark itself a holder with O_EXCL marker files → do `steps`
// steps, checking handle.isHeld synchronously before each → (exclusive kinds) read-modify-write
// a shared counter file → unmark → release. Every grant becomes one JSON line in `out`.
//
// Times are process.hrtime.bigint() (CLOCK_MONOTONIC on Linux, one clock for every process of
// the machine) minus the runner's `t0`, in nanoseconds, so the runner can order the grants of
// all workers on one time line.
//
// Usage: node torture/worker.mjs '<json config>' (see `cfg` below); started by torture/run.mjs.
import {
  appendFileSync,
  closeSync,
  existsSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'

const cfg = JSON.parse(process.argv[2])
// cfg: { provider: { type: 'file'|'postgres'|'redis'|'mysql'|'etcd', ... }, primitive: 'mutex'|'rw'|'semaphore',
//   name, maxCount, dir, out, t0 (ns, string), durationMs, timeoutMs, steps, stepMs, readRatio, leaseMs,
//   callers (loops in this process contending for the name at once; default 1),
//   tryRatio (the share of mutex iterations that tryAcquire instead; default 0) }

const t0 = BigInt(cfg.t0)
const now = () => Number(process.hrtime.bigint() - t0)
const ms = (ns) => ns / 1e6
const tick = () => new Promise((resolve) => setImmediate(resolve))
const sleep = (n) => new Promise((resolve) => setTimeout(resolve, n))

let lib
try {
  lib = createRequire(import.meta.url)('../')
} catch (err) {
  console.error(
    `torture worker: cannot load distlock from the repository root (build it: npm run build): ${err.message}`,
  )
  process.exit(3)
}

function makeProvider(p) {
  switch (p.type) {
    case 'file':
      return new lib.FileLockProvider({ directory: p.directory })
    case 'postgres':
      return new lib.PostgresLockProvider({ connectionString: p.connectionString })
    case 'mysql':
      return new lib.MySqlLockProvider({ connectionString: p.connectionString, keepaliveMs: p.keepaliveMs })
    case 'etcd':
      return new lib.EtcdLockProvider({ endpoints: p.endpoints })
    case 'redis':
      return new lib.RedisLockProvider({
        urls: p.urls,
        leaseMs: p.leaseMs,
        extendEveryMs: p.extendEveryMs,
        serverTimeoutMs: p.serverTimeoutMs,
        keyPrefix: p.keyPrefix,
      })
    default:
      throw new Error(`unknown provider type ${p.type}`)
  }
}

const provider = makeProvider(cfg.provider)
const markers = join(cfg.dir, 'markers')
const counterFile = join(cfg.dir, 'counter')
const EXCL = join(markers, 'excl')

let pending = []
function flush() {
  if (pending.length) appendFileSync(cfg.out, pending.join('\n') + '\n')
  pending = []
}
setInterval(flush, 200).unref()

/** Creates `path` with O_EXCL; false if it already exists. */
function mark(path, content) {
  try {
    const fd = openSync(path, 'wx')
    writeFileSync(fd, content)
    closeSync(fd)
    return true
  } catch (err) {
    if (err.code === 'EEXIST') return false
    throw err
  }
}

function unmark(path) {
  try {
    unlinkSync(path)
  } catch {}
}

const stats = {
  type: 'summary',
  pid: process.pid,
  grants: 0,
  writes: 0,
  acquireErrors: {},
  maxAcquireSettleMs: 0,
  maxAcquireOvershootMs: 0,
  maxReleaseMs: 0,
  releaseErrors: {},
  frozen: 0,
}

// The runner may ask the workers to have one holder stop itself (SIGSTOP) inside its critical
// section, between two steps, so that it resumes past its lease with the next isHeld check to
// run. The first worker to claim the round (an O_EXCL file) freezes; the others let it pass.
let freezeRound = null
process.on('message', (msg) => {
  if (msg && 'freeze' in msg) freezeRound = msg.freeze
})

// 'permits': a semaphore whose acquires take 1 to 3 permits at once.
const semaphore = cfg.primitive === 'semaphore' || cfg.primitive === 'permits'
const lock =
  cfg.primitive === 'rw'
    ? provider.createReaderWriterLock(cfg.name)
    : semaphore
      ? provider.createSemaphore(cfg.name, cfg.maxCount)
      : provider.createLock(cfg.name)

function acquire(kind, options) {
  if (kind === 'read') return lock.acquireRead(options)
  if (kind === 'write') return lock.acquireWrite(options)
  return lock.acquire(options)
}

/** One critical section under `h` by the loop `caller` of this process; fills `rec`. */
async function critical(h, kind, rec, caller) {
  let held = true
  // The synchronous check a careful holder makes before each step of its work.
  const check = () => {
    const v = h.isHeld
    const aborted = h.signal.aborted
    rec.isHeldBeforeEachStep += v === true ? 'T' : v === false ? 'F' : '?'
    rec.abortedBeforeEachStep += aborted ? '1' : '0'
    if (v !== false) rec.lastHeldAt = now()
    // Until isHeld exists, the signal is all a holder has.
    held = v === undefined ? !aborted : v && !aborted
    return held
  }
  // Enter: mark.
  let mine = []
  if (kind === 'mutex' || kind === 'write') {
    if (mark(EXCL, `${process.pid} ${rec.token}`)) mine.push(EXCL)
    else rec.overlapDetected = 'exclusive marker already there'
    if (kind === 'write' && readdirSync(markers).some((f) => f.startsWith('reader.'))) {
      rec.overlapDetected = 'a reader marker is there'
    }
  } else if (kind === 'read') {
    const path = join(markers, `reader.${process.pid}.${caller}`)
    if (mark(path, rec.token)) mine.push(path)
    if (existsSync(EXCL)) rec.overlapDetected = 'a writer marker is there'
  } else {
    // One slot marker per permit held.
    for (let i = 0; i < cfg.maxCount && mine.length < rec.permits; i++) {
      if (mark(join(markers, `slot.${i}`), rec.token)) mine.push(join(markers, `slot.${i}`))
    }
    if (mine.length < rec.permits)
      rec.overlapDetected = `fewer than ${rec.permits} of ${cfg.maxCount} slot markers free`
  }
  rec.tEnter = now()
  for (let i = 0; i < cfg.steps; i++) {
    if (!check()) break
    if (cfg.stepMs > 0) await sleep(cfg.stepMs)
    else await tick()
  }
  if (held && (kind === 'mutex' || kind === 'write')) {
    // The lost-update check: read, yield, write + 1, all under the lock.
    if (check()) {
      let value = Number(readFileSync(counterFile, 'utf8')) || 0
      await tick()
      if (freezeRound && mark(join(cfg.dir, `freeze.${freezeRound}`), String(process.pid))) {
        freezeRound = null
        stats.frozen++
        rec.frozeAt = now()
        process.kill(process.pid, 'SIGSTOP')
        rec.resumedAt = now()
      }
      if (check()) {
        // Replaced atomically, so a reader never sees a half-written file: an overlap loses
        // exactly the increments it overwrites, no more.
        const counterTmp = join(cfg.dir, `counter.${process.pid}.${caller}`)
        writeFileSync(counterTmp, String(value + 1))
        renameSync(counterTmp, counterFile)
        rec.wrote = true
        stats.writes++
      }
    }
  }
  check()
  if (kind !== 'read' && kind !== 'semaphore' && !rec.overlapDetected && !existsSync(EXCL)) {
    rec.overlapDetected = 'my exclusive marker vanished'
  }
  rec.tExit = now()
  for (const path of mine) unmark(path)
}

/** One contending loop; `caller` tells the loops of this process apart. */
async function loop(caller) {
  const end = now() + cfg.durationMs * 1e6
  // Bounded in time (durationMs) and in count.
  for (let iteration = 0; iteration < 10_000_000 && now() < end; iteration++) {
    const kind =
      cfg.primitive === 'rw' ? (Math.random() < cfg.readRatio ? 'read' : 'write') : semaphore ? 'semaphore' : 'mutex'
    const permits = cfg.primitive === 'permits' ? 1 + Math.floor(Math.random() * 3) : 1
    const tAcqStart = now()
    const timeoutMs = Math.max(0, Math.min(cfg.timeoutMs, ms(end - tAcqStart) + 500))
    let h
    try {
      const options = { timeoutMs: Math.round(timeoutMs), leaseMs: cfg.leaseMs }
      if (kind === 'mutex' && Math.random() < (cfg.tryRatio ?? 0)) {
        h = await lock.tryAcquire({ leaseMs: cfg.leaseMs })
        if (!h) {
          stats.tryBusy = (stats.tryBusy ?? 0) + 1
          await sleep(20)
          continue
        }
      } else h = await acquire(kind, permits > 1 ? { ...options, permits } : options)
    } catch (err) {
      const code = err?.code ?? err?.name ?? 'unknown'
      stats.acquireErrors[code] = (stats.acquireErrors[code] ?? 0) + 1
      const settle = ms(now() - tAcqStart)
      stats.maxAcquireSettleMs = Math.max(stats.maxAcquireSettleMs, settle)
      stats.maxAcquireOvershootMs = Math.max(stats.maxAcquireOvershootMs, settle - timeoutMs)
      if (!stats.firstError && code !== 'ERR_LOCK_TIMEOUT') stats.firstError = `${code}: ${err?.message}`.slice(0, 300)
      await sleep(20)
      continue
    }
    const tGranted = now()
    stats.grants++
    stats.maxAcquireSettleMs = Math.max(stats.maxAcquireSettleMs, ms(tGranted - tAcqStart))
    stats.maxAcquireOvershootMs = Math.max(stats.maxAcquireOvershootMs, ms(tGranted - tAcqStart) - timeoutMs)
    const rec = {
      type: 'grant',
      pid: process.pid,
      caller,
      kind,
      permits,
      token: String(h.fencingToken),
      tAcqStart,
      tGranted,
      tEnter: 0,
      tExit: 0,
      tReleased: 0,
      overlapDetected: null,
      isHeldBeforeEachStep: '',
      abortedBeforeEachStep: '',
      lastHeldAt: null,
      lostAt: null,
      wrote: false,
    }
    const signal = h.signal
    if (signal.aborted) rec.lostAt = tGranted
    else signal.addEventListener('abort', () => (rec.lostAt = now()), { once: true })
    await critical(h, kind, rec, caller)
    const tRel = now()
    try {
      await h.release()
    } catch (err) {
      const code = err?.code ?? err?.name ?? 'unknown'
      stats.releaseErrors[code] = (stats.releaseErrors[code] ?? 0) + 1
    }
    rec.tReleased = now()
    stats.maxReleaseMs = Math.max(stats.maxReleaseMs, ms(rec.tReleased - tRel))
    pending.push(JSON.stringify(rec))
    if (pending.length >= 500) flush()
  }
}

let failure
try {
  await Promise.all(Array.from({ length: cfg.callers ?? 1 }, (_, caller) => loop(caller)))
} catch (err) {
  failure = err
  stats.fatal = String(err?.stack ?? err).slice(0, 1000)
}
flush()
appendFileSync(cfg.out, JSON.stringify(stats) + '\n')
// close() is bounded here so a hung backend cannot keep the worker alive; the runner also
// kills workers that outlive their deadline.
await Promise.race([provider.close().catch(() => {}), sleep(5_000)])
process.exit(failure ? 2 : 0)
