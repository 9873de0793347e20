#!/usr/bin/env node
// W1 (one loop, acquire+release of one name) on the file backend and a private Redis, under Node
// (both drivers), Bun and Deno, each in its own child process running
// __test__/fixtures/runtime-locks.mjs against the built package. Prints a Markdown table of the
// medians (and min..max) of the repetitions, which are interleaved across the runtimes so drift
// hits all alike. Measure a release build (`npm run build`).
//
//   node scripts/runtime-w1.mjs [--reps=N (1..10, default 3)] [--seconds=S (0..30], default 3)]
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { startRedis, stopServices } from '../lab/index.mjs'

const root = new URL('..', import.meta.url).pathname
const opt = (name, dflt) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? dflt)
const REPS = opt('reps', 3)
const SECONDS = opt('seconds', 3)
if (!(REPS >= 1 && REPS <= 10) || !(SECONDS > 0 && SECONDS <= 30)) {
  console.error('runtime-w1: --reps takes 1..10 and --seconds (0, 30]')
  process.exit(2)
}

const addon = readdirSync(root).find((f) => /^distlock\..+\.node$/.test(f))
const sections = spawnSync('readelf', ['-S', join(root, addon ?? '')], { encoding: 'utf8' }).stdout ?? ''
if (!addon) {
  console.error('runtime-w1: no addon built; run `npm run build` first')
  process.exit(1)
}
if (sections.includes('.debug_info')) console.warn('runtime-w1: this is a debug build; run `npm run build` to measure')

const bun = join(root, 'node_modules', 'bun', 'bin', 'bun.exe')
const denoBin = join(root, 'node_modules', 'deno', process.platform === 'win32' ? 'deno.exe' : 'deno')
const deno = ['run', '--allow-env', '--allow-sys', `--allow-read=${root}`, `--allow-ffi=${root}`]
const CASES = [
  { label: 'Node', cmd: process.execPath, args: [], env: {} },
  { label: 'Node, DISTLOCK_DRIVER=tokio', cmd: process.execPath, args: [], env: { DISTLOCK_DRIVER: 'tokio' } },
  { label: 'Bun', cmd: bun, args: [], env: {} },
  { label: 'Deno', cmd: denoBin, args: deno, env: {} },
]
const BACKENDS = ['file', 'redis']

const redis = await startRedis()
const baseEnv = {
  ...process.env,
  DISTLOCK_RUNTIME_DIR: mkdtempSync(join(tmpdir(), 'distlock-w1-')),
  DISTLOCK_RUNTIME_REDIS_URL: redis.url,
  DENO_NO_UPDATE_CHECK: '1',
  DENO_NO_PROMPT: '1',
  NO_COLOR: '1',
  DO_NOT_TRACK: '1',
}
delete baseEnv.DISTLOCK_DRIVER

const seen = new Map() // label -> { runtime, driver: {backend}, ops: {backend: []} }
try {
  for (let rep = 0; rep < REPS; rep++) {
    for (const c of CASES) {
      const res = spawnSync(
        c.cmd,
        [...c.args, join(root, '__test__/fixtures/runtime-locks.mjs'), 'w1', BACKENDS.join(','), String(SECONDS)],
        {
          cwd: root,
          env: { ...baseEnv, ...c.env },
          encoding: 'utf8',
          timeout: (SECONDS * BACKENDS.length + 30) * 1000,
        },
      )
      const lines = (res.stdout ?? '')
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l))
      const entry = seen.get(c.label) ?? { runtime: lines[0]?.runtime, driver: {}, ops: {} }
      for (const b of BACKENDS) {
        const line = lines.find((l) => l.backend === b)
        if (!line?.ok) {
          throw new Error(`${c.label} ${b}: ${line?.error ?? `exit ${res.status} ${res.signal ?? ''} ${res.stderr}`}`)
        }
        entry.driver[b] = line.driver
        ;(entry.ops[b] ??= []).push(line.opsPerSec)
      }
      seen.set(c.label, entry)
      console.error(
        `rep ${rep + 1}/${REPS} ${c.label}: ${BACKENDS.map((b) => `${b} ${entry.ops[b].at(-1)}`).join(', ')}`,
      )
    }
  }
} finally {
  stopServices()
}

const median = (xs) => xs.toSorted((a, b) => a - b)[Math.floor(xs.length / 2)]
const cell = (xs) => `${median(xs)} (${Math.min(...xs)}..${Math.max(...xs)})`
console.log(`W1 ops/s, median (min..max) of ${REPS} × ${SECONDS} s`)
console.log('')
console.log(`| runtime | driver | file | Redis |`)
console.log('| --- | --- | --: | --: |')
for (const [label, e] of seen) {
  console.log(`| ${label} (${e.runtime}) | ${e.driver.file} | ${cell(e.ops.file)} | ${cell(e.ops.redis)} |`)
}
