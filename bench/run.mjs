#!/usr/bin/env node
// `npm run bench`: every benchmark in one run — file, PostgreSQL, Redis, MySQL/MariaDB and etcd
// (W1–W4 with their floors), then the extra scenarios. `--quick` (a smoke check of a few
// minutes) passes through, as do --reps, --seconds and --only. Server options go to their own
// scripts: --url (PostgreSQL) to pg.mjs and scenarios.mjs, --mysql-url to mysql.mjs (as its
// --url), --etcd-endpoints to etcd.mjs (as its --endpoints).
import { spawnSync } from 'node:child_process'
import path from 'node:path'

import { here } from './lib.mjs'

// option -> { script: the name it has there }
const SERVER_OPTIONS = {
  url: { 'pg.mjs': 'url', 'scenarios.mjs': 'url' },
  'mysql-url': { 'mysql.mjs': 'url' },
  'etcd-endpoints': { 'etcd.mjs': 'endpoints' },
}

const argsFor = (script) =>
  process.argv.slice(2).flatMap((arg) => {
    const m = /^--([\w-]+)=(.*)$/s.exec(arg)
    const to = m && SERVER_OPTIONS[m[1]]
    if (!to) return [arg]
    return to[script] ? [`--${to[script]}=${m[2]}`] : []
  })

let failed = false
for (const script of ['file.mjs', 'pg.mjs', 'redis.mjs', 'mysql.mjs', 'etcd.mjs', 'scenarios.mjs']) {
  console.log(`\n## ${script}\n`)
  const res = spawnSync(process.execPath, ['--expose-gc', path.join(here, script), ...argsFor(script)], {
    stdio: 'inherit',
  })
  if (res.status !== 0) {
    console.error(`bench: ${script} failed (exit ${res.status})`)
    failed = true
  }
}
process.exit(failed ? 1 : 0)
