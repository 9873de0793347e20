#!/usr/bin/env node
// `npm run bench`: every benchmark in one run — file, PostgreSQL and Redis (W1–W4 with their
// floors), then the extra scenarios. `--quick` (under a minute or two) passes through, as do
// --reps, --seconds and --url.
import { spawnSync } from 'node:child_process'
import path from 'node:path'

import { here } from './lib.mjs'

const args = process.argv.slice(2)
let failed = false
for (const script of ['file.mjs', 'pg.mjs', 'redis.mjs', 'scenarios.mjs']) {
  console.log(`\n## ${script}\n`)
  const res = spawnSync(process.execPath, ['--expose-gc', path.join(here, script), ...args], { stdio: 'inherit' })
  if (res.status !== 0) {
    console.error(`bench: ${script} failed (exit ${res.status})`)
    failed = true
  }
}
process.exit(failed ? 1 : 0)
