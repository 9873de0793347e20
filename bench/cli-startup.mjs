// CLI startup: `distlock run x --file DIR -- true` against a bare `node -e 0`, medians of N
// interleaved runs, and the parts in between (requiring dist/cli.js, loading the addon, one
// acquire+release). A benchmark, not a test: nothing here asserts a time.
//
//   node bench/cli-startup.mjs            # 30 runs of each
//   node bench/cli-startup.mjs --runs=60
//   node bench/cli-startup.mjs --compare=/other/checkout/bin/distlock.js   # another build beside
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import { median, opt, root } from './lib.mjs'

const RUNS = Number(opt('runs') ?? 30)
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'distlock-bench-cli-'))
const cli = path.join(root, 'bin', 'distlock.js')
const node = process.execPath

const cases = [
  ['node -e 0', [node, '-e', '0']],
  ['require dist/cli.js', [node, '-e', `require(${JSON.stringify(path.join(root, 'dist', 'cli.js'))})`]],
  ['require native.cjs (the addon)', [node, '-e', `require(${JSON.stringify(path.join(root, 'native.cjs'))})`]],
  ['distlock path x', [node, cli, 'path', 'x', '--file', dir]],
  ['distlock run x --file DIR -- true', [node, cli, 'run', 'x', '--file', dir, '--', 'true']],
]
const compare = opt('compare')
if (compare)
  cases.push([`${compare} run x --file DIR -- true`, [node, compare, 'run', 'x', '--file', dir, '--', 'true']])

/** Wall time of one run, in ms. */
function once([file, ...args]) {
  const t0 = process.hrtime.bigint()
  const res = spawnSync(file, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  if (res.status !== 0) throw new Error(`${[file, ...args].join(' ')} exited ${res.status}: ${res.stderr}`)
  return ms
}

const times = Object.fromEntries(cases.map(([label]) => [label, []]))
for (const [, argv] of cases) once(argv) // warm the page cache
for (let i = 0; i < RUNS; i++) for (const [label, argv] of cases) times[label].push(once(argv))

const base = median(times['node -e 0'])
const rows = cases.map(([label]) => {
  const m = median(times[label])
  return {
    label,
    medianMs: +m.toFixed(1),
    minMs: +Math.min(...times[label]).toFixed(1),
    overNodeMs: +(m - base).toFixed(1),
    ratio: +(m / base).toFixed(2),
  }
})
console.log(`CLI startup, median of ${RUNS} interleaved runs (Node ${process.version}, ${os.cpus().length} CPUs)\n`)
console.log('| what | median ms | min ms | over node -e 0 ms | ÷ node -e 0 |')
console.log('| --- | --: | --: | --: | --: |')
for (const r of rows) console.log(`| ${r.label} | ${r.medianMs} | ${r.minMs} | ${r.overNodeMs} | ${r.ratio} |`)

const out = path.join(
  root,
  'bench',
  'results',
  `cli-startup-${new Date().toISOString().replaceAll(':', '-').replace('.', '-')}.json`,
)
fs.mkdirSync(path.dirname(out), { recursive: true })
fs.writeFileSync(out, JSON.stringify({ runs: RUNS, node: process.version, rows, times }, null, 2))
console.log(`\nraw: ${path.relative(root, out)}`)
fs.rmSync(dir, { recursive: true, force: true })
