#!/usr/bin/env node
// W1–W4 (DESIGN.md §6) for the MySQL/MariaDB backend, against raw `mysql2` + GET_LOCK, in one run
// on one server, with a mariadb-slap floor when mariadb-slap (or mysqlslap) is there.
//
//   node bench/mysql.mjs [--quick] [--only=id,id] [--reps=N] [--seconds=S] [--url=mysql://...]
//
// W1: one loop on one name. W2: 64 loops, each on its own name. W3: 16 loops in one process on
// one name. W4: 4 processes on one name (bench/lib.mjs checks exclusion across them).
// Server: --url, else $DISTLOCK_TEST_MYSQL_URL, else a private MariaDB server started here
// (lab/ findMysql) and stopped at the end.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
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
const mysql = require('mysql2/promise')

// GET_LOCK's wait, in seconds: a year. MySQL takes a negative timeout as "forever", MariaDB
// answers NULL to it (warning 1411), so both get a long positive one.
const WAIT_S = 31_536_000

// Names as the server sees them: distlock passes a lowercase name of at most 64 characters
// through unchanged (it hashes the others), so lowercase short names lock the same thing in
// every case.
const lockName = (w) => freshName(w).toLowerCase()

/** distlock's loops on `names`, with fencing tokens from `fencing`. */
function distlockLoops(url, names, fencing) {
  const { MySqlLockProvider } = require(root)
  return providerLoops(new MySqlLockProvider({ connectionString: url, maxConnections: 16, fencing }), names)
}

// A case: make(url, names) -> { loops: [acquire() -> release()], close() }, one loop per name.
const CASES = [
  {
    id: 'distlock',
    label: 'distlock MySqlLockProvider',
    make: (url, names) => distlockLoops(url, names, 'table'),
  },
  {
    id: 'distlock-uuid',
    label: "distlock MySqlLockProvider, fencing: 'uuid-short'",
    make: (url, names) => distlockLoops(url, names, 'uuid-short'),
  },
  {
    id: 'mysql2',
    label: 'raw mysql2: GET_LOCK / RELEASE_LOCK',
    async make(url, names) {
      // One connection per loop: a named lock belongs to its connection. `execute` prepares each
      // statement once per connection, as distlock does.
      const conns = await Promise.all(names.map(() => mysql.createConnection(url)))
      return {
        loops: conns.map((c, i) => {
          const name = names[i]
          return async () => {
            const [[got]] = await c.execute('SELECT GET_LOCK(?, ?) AS got', [name, WAIT_S])
            if (got.got !== 1) throw new Error(`GET_LOCK(${name}) answered ${got.got}`)
            return async () => {
              await c.execute('SELECT RELEASE_LOCK(?)', [name])
            }
          }
        }),
        close: () => Promise.all(conns.map((c) => c.end())),
      }
    },
  },
]

// A W4 child: one loop of one case on the shared name.
if (opt('child')) {
  const c = CASES.find((x) => x.id === opt('child'))
  const inst = await c.make(opt('url'), [opt('name').toLowerCase()])
  await childLoop(inst.loops[0])
  await inst.close()
  process.exit(0)
}

// The floor: mariadb-slap, one client, the bare GET_LOCK / RELEASE_LOCK pair on one name, as
// text statements (it does not prepare them). Cycles per second, or null without the tool.
function slapFloor(url) {
  const tool = ['mariadb-slap', 'mysqlslap'].find((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0)
  if (!tool) return null
  const u = new URL(url)
  const queries = QUICK ? 4000 : 40_000
  const res = spawnSync(
    tool,
    [
      '--no-defaults',
      '--protocol=TCP',
      '-h',
      u.hostname,
      '-P',
      u.port || '3306',
      '-u',
      decodeURIComponent(u.username),
      // The URL's database, kept: mariadb-slap drops the schema it ran in unless told not to.
      `--create-schema=${decodeURIComponent(u.pathname.slice(1)) || 'test'}`,
      '--no-drop',
      '--concurrency=1',
      '--iterations=1',
      `--number-of-queries=${queries}`,
      '--delimiter=;',
      `--query=SELECT GET_LOCK('distlock-floor', ${WAIT_S});SELECT RELEASE_LOCK('distlock-floor')`,
    ],
    { encoding: 'utf8', timeout: 120_000, env: { ...process.env, MYSQL_PWD: decodeURIComponent(u.password) } },
  )
  const m = /Average number of seconds to run all queries: ([\d.]+)/.exec(res.stdout ?? '')
  if (res.status !== 0 || /error/i.test(res.stderr ?? '') || !m) return null
  return queries / 2 / Number(m[1])
}

const services = await import('../lab/index.mjs')
const URL_MY = opt('url') ?? (await services.findMysql()).url

const cases = CASES.filter((c) => !ONLY || ONLY.includes(c.id))
const results = []
let floor
let server
try {
  for (const w of ['W1', 'W2', 'W3', 'W4']) {
    const reps = new Map(cases.map((c) => [c.id, []]))
    for (let r = 0; r < REPS; r++) {
      for (const c of cases) {
        process.stderr.write(`${w} ${c.id} rep ${r + 1}/${REPS}\n`)
        if (w === 'W4') {
          // lib.mjs names W4's lock; the children lock its lowercase form (see lockName).
          reps.get(c.id).push(await runProcesses(process.argv[1], c.id, [`--url=${URL_MY}`]))
          continue
        }
        const shared = lockName(w)
        const names = Array.from({ length: LOOPS[w] }, (_, i) => (w === 'W2' ? `${shared}-${i}` : shared))
        const inst = await c.make(URL_MY, names)
        try {
          reps.get(c.id).push(await runLoops(inst, { shared: w !== 'W2' }))
        } finally {
          await inst.close()
        }
      }
    }
    for (const c of cases) results.push(summarize(w, { ...c, group: 'mysql' }, reps.get(c.id)))
  }
  floor = slapFloor(URL_MY)
  const c = await mysql.createConnection(URL_MY)
  server = (await c.query('SELECT VERSION() AS v'))[0][0].v
  await c.end()
} finally {
  services.stopServices()
}

console.log(`\nMySQL/MariaDB ${server}, Node ${process.version}, ${REPS} reps × ${RUN_S} s, medians\n`)
printTable(results)
console.log(`\nmariadb-slap floor (1 client, GET_LOCK + RELEASE_LOCK cycles/s): ${floor ? floor.toFixed(0) : 'n/a'}`)
console.log(`\nraw results: ${saveResults('mysql', { server, floor, results })}`)
