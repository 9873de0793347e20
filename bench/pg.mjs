#!/usr/bin/env node
// W1–W4 (DESIGN.md §6) for the PostgreSQL backend, against raw `pg` + pg_advisory_lock and the
// `advisory-lock` package, in one run on one server, with pgbench floors when pgbench is there.
//
//   node bench/pg.mjs [--quick] [--only=id,id] [--reps=N] [--seconds=S] [--url=postgres://...]
//
// W1: one loop on one name. W2: 64 loops, each on its own name. W3: 16 loops in one process on
// one name. W4: 4 processes on one name (bench/lib.mjs checks exclusion across them).
// Server: --url, else the lab's findPostgres(): $DISTLOCK_TEST_PG_URL, the server on
// 127.0.0.1:5432, or a private cluster (the one rule the tests and torture use too).
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
  runLoops,
  runProcesses,
  saveResults,
  summarize,
} from './lib.mjs'

const require = createRequire(path.join(root, 'package.json'))
const distlock = require(root)
const pg = require('pg')
const advisoryLock = require('advisory-lock').default
const URL_PG = opt('url') ?? (await (await import('../lab/index.mjs')).findPostgres()).url

// The bigint key raw pg uses for a name: the one distlock derives, so both lock the same thing.
const keyOf = (name) => {
  let h = 0n
  for (const c of Buffer.from(name)) h = (h * 131n + BigInt(c)) & 0x7fffffffffffffffn
  return h.toString()
}

// A case: make(names) -> { loops: [acquire() -> release()], close() }, one loop per name.
const CASES = [
  {
    id: 'distlock',
    label: 'distlock PostgresLockProvider',
    async make(names) {
      return providerLoops(new distlock.PostgresLockProvider({ connectionString: URL_PG, maxConnections: 16 }), names)
    },
  },
  {
    id: 'pg',
    label: 'raw pg: pg_advisory_lock / pg_advisory_unlock',
    async make(names) {
      // One connection per loop: a session-level advisory lock belongs to its connection.
      const clients = await Promise.all(
        names.map(async () => {
          const c = new pg.Client({ connectionString: URL_PG })
          await c.connect()
          return c
        }),
      )
      return {
        loops: clients.map((c, i) => {
          const key = keyOf(names[i])
          return async () => {
            await c.query('SELECT pg_advisory_lock($1)', [key])
            return async () => {
              await c.query('SELECT pg_advisory_unlock($1)', [key])
            }
          }
        }),
        close: () => Promise.all(clients.map((c) => c.end())),
      }
    },
  },
  {
    id: 'advisory-lock',
    label: 'advisory-lock (a connection per lock)',
    async make(names) {
      const create = advisoryLock(URL_PG)
      return { loops: names.map((n) => () => create(n).lock()), close: async () => {} }
    },
  },
]

// A W4 child: one loop of one case on the shared name.
if (opt('child')) {
  const c = CASES.find((x) => x.id === opt('child'))
  const inst = await c.make([opt('name')])
  await childLoop(inst.loops[0])
  await inst.close()
  process.exit(0)
}

const cases = CASES.filter((c) => !ONLY || ONLY.includes(c.id))
const results = []
for (const w of ['W1', 'W2', 'W3', 'W4']) {
  const reps = new Map(cases.map((c) => [c.id, []]))
  for (let r = 0; r < REPS; r++) {
    for (const c of cases) {
      process.stderr.write(`${w} ${c.id} rep ${r + 1}/${REPS}\n`)
      if (w === 'W4') {
        reps.get(c.id).push(await runProcesses(process.argv[1], c.id, [`--url=${URL_PG}`]))
        continue
      }
      const shared = freshName(w)
      const names = Array.from({ length: LOOPS[w] }, (_, i) => (w === 'W2' ? `${shared}-${i}` : shared))
      const inst = await c.make(names)
      try {
        reps.get(c.id).push(await runLoops(inst, { shared: w !== 'W2' }))
      } finally {
        await inst.close()
      }
    }
  }
  for (const c of cases) results.push(summarize(w, { ...c, group: 'pg' }, reps.get(c.id)))
}

// Floors: pgbench, one client, prepared statements (-M prepared, as distlock's session scope
// sends them): distlock's two statements and the bare lock/unlock pair.
function pgbench(script) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'distlock-pgbench-')), 'cycle.sql')
  fs.writeFileSync(file, script)
  const res = spawnSync('pgbench', ['-n', '-M', 'prepared', '-c', '1', '-T', QUICK ? '1' : '5', '-f', file, URL_PG], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  const m = /tps = ([\d.]+)/.exec(res.stdout ?? '')
  return m ? Number(m[1]) : null
}
{
  const c = new pg.Client({ connectionString: URL_PG })
  await c.connect()
  await c.query('CREATE SEQUENCE IF NOT EXISTS distlock_fencing_token')
  await c.end()
}
const floors = {
  distlockStatements: pgbench(
    "SELECT CASE WHEN pg_try_advisory_lock(42424242) THEN nextval('distlock_fencing_token') END;\nSELECT pg_advisory_unlock(42424242);\n",
  ),
  bareLockUnlock: pgbench('SELECT pg_advisory_lock(42424243);\nSELECT pg_advisory_unlock(42424243);\n'),
}

const server = await (async () => {
  const c = new pg.Client({ connectionString: URL_PG })
  await c.connect()
  const v = (await c.query('SHOW server_version')).rows[0].server_version
  await c.end()
  return v
})()
console.log(`\nPostgreSQL ${server}, Node ${process.version}, ${REPS} reps × ${RUN_S} s, medians\n`)
printTable(results)
console.log(
  `\npgbench floor (1 client, cycles/s): distlock's statements ${floors.distlockStatements ?? 'n/a'}, bare lock/unlock ${floors.bareLockUnlock ?? 'n/a'}`,
)
console.log(`\nraw results: ${saveResults('pg', { server, floors, results })}`)
