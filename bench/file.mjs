#!/usr/bin/env node
// W1–W4 (DESIGN.md §6) for the file backend against fs-ext (async flock, an fd kept open per
// loop) and proper-lockfile (mkdir lock, polling with a 10 ms retry), plus a C-speed floor: a
// Rust loop of flock/unflock. W1's detailed study (more cases and floors) is bench/w1-file.mjs.
//
//   node bench/file.mjs [--quick] [--only=id,id] [--reps=N] [--seconds=S]
//
// W3 runs each case in a child process that is killed if it hangs: fs-ext's async flock blocks
// a libuv pool thread per waiter, and with 16 waiters on 4 threads the unlock can never run.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'

import {
  LOOPS,
  ONLY,
  QUICK,
  REPS,
  RUN_S,
  childLoop,
  freshName,
  opt,
  printTable,
  providerLoops,
  root,
  runIsolated,
  runLoops,
  runProcesses,
  saveResults,
  summarize,
} from './lib.mjs'

const require = createRequire(path.join(root, 'package.json'))
const distlock = require(root)
const fsExt = require('fs-ext')
const lockfile = require('proper-lockfile')

const flock = (fd, mode) =>
  new Promise((resolve, reject) => fsExt.flock(fd, mode, (err) => (err ? reject(err) : resolve())))

const CASES = [
  {
    id: 'distlock',
    label: 'distlock FileLockProvider',
    async make(dir, names) {
      return providerLoops(new distlock.FileLockProvider({ directory: dir }), names)
    },
  },
  {
    id: 'fs-ext',
    label: 'fs-ext flock (async, fd kept open)',
    async make(dir, names) {
      const fds = names.map((n) => fs.openSync(path.join(dir, `${n}.fsext`), 'a'))
      return {
        loops: fds.map((fd) => async () => {
          await flock(fd, 'ex')
          return () => flock(fd, 'un')
        }),
        close: async () => fds.forEach((fd) => fs.closeSync(fd)),
      }
    },
  },
  {
    id: 'proper-lockfile',
    label: 'proper-lockfile (10 ms retries when contended)',
    async make(dir, names, contended) {
      // Its retry option alone makes even an uncontended lock ~30x slower: only where needed.
      const o = contended
        ? { realpath: false, retries: { retries: 100_000, minTimeout: 10, maxTimeout: 10 } }
        : { realpath: false }
      return {
        loops: names.map((n) => {
          const file = path.join(dir, `${n}.plf`)
          return async () => {
            const release = await lockfile.lock(file, o)
            return () => release()
          }
        }),
        close: async () => {},
      }
    },
  },
]

const namesFor = (w, shared) => Array.from({ length: LOOPS[w] }, (_, i) => (w === 'W2' ? `${shared}-${i}` : shared))

// A W4 child (one loop on the shared name) or an isolated W3 run.
if (opt('child') || opt('isolated')) {
  const c = CASES.find((x) => x.id === (opt('child') ?? opt('isolated')))
  const dir = opt('lockdir')
  if (opt('child')) {
    const inst = await c.make(dir, [opt('name')], true)
    await childLoop(inst.loops[0])
    await inst.close()
  } else {
    const w = opt('workload')
    const inst = await c.make(dir, namesFor(w, freshName(w)), true)
    process.stdout.write(JSON.stringify(await runLoops(inst, { shared: w !== 'W2' })))
    await inst.close()
  }
  process.exit(0)
}

const cases = CASES.filter((c) => !ONLY || ONLY.includes(c.id))
const results = []
const lockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'distlock-bench-file-'))
for (const w of ['W1', 'W2', 'W3', 'W4']) {
  const reps = new Map(cases.map((c) => [c.id, []]))
  for (let r = 0; r < REPS; r++) {
    for (const c of cases) {
      process.stderr.write(`${w} ${c.id} rep ${r + 1}/${REPS}\n`)
      const args = [`--lockdir=${lockDir}`]
      if (w === 'W4') reps.get(c.id).push(await runProcesses(process.argv[1], c.id, args))
      else if (w === 'W3') reps.get(c.id).push(await runIsolated(process.argv[1], c.id, w, args))
      else {
        const inst = await c.make(lockDir, namesFor(w, freshName(w)), false)
        try {
          reps.get(c.id).push(await runLoops(inst, { shared: w !== 'W2' }))
        } finally {
          await inst.close()
        }
      }
    }
  }
  for (const c of cases) results.push(summarize(w, { ...c, group: 'file' }, reps.get(c.id)))
}
fs.rmSync(lockDir, { recursive: true, force: true })

// The floor: flock/unflock in a Rust loop (distlock-file's example), one process. Skipped by
// --quick: its first run compiles the example.
let floorOps = NaN
if (!QUICK) {
  const floor = spawnSync(
    'cargo',
    ['run', '--quiet', '--release', '-p', 'distlock-file', '--example', 'flock-floor', '--', String(RUN_S)],
    { cwd: root, encoding: 'utf8', timeout: 600_000 },
  )
  floorOps = Number(/([\d.]+) cycles\/s/.exec(floor.stdout ?? '')?.[1] ?? NaN)
}

console.log(`\nLinux ${os.release()}, ${os.tmpdir()}, Node ${process.version}, ${REPS} reps × ${RUN_S} s, medians\n`)
printTable(results)
console.log(
  `\nfloor: flock(LOCK_EX) + flock(LOCK_UN) on an open fd in a Rust loop: ${Number.isNaN(floorOps) ? (QUICK ? 'skipped by --quick' : 'n/a') : `${floorOps.toFixed(0)} cycles/s`}`,
)
console.log(`\nraw results: ${saveResults('file', { floor: { flockCyclesPerSec: floorOps }, results })}`)
