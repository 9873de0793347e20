// A read-modify-write of one PostgreSQL row by three worker processes, kept apart by a
// PostgreSQL advisory lock, with the lock's fencing token checked by the UPDATE itself: the row
// keeps the highest token that wrote it, and a write carrying a smaller one changes nothing.
// Needs the `pg` package for the table (npm install pg); the lock itself needs only distlock.
//
//   DISTLOCK_EXAMPLE_PG_URL=postgres://user:password@host:5432/db node examples/postgres.mjs
//   (default postgres://postgres@127.0.0.1:5432/postgres)
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

import { PostgresLockProvider } from 'distlock'
import pg from 'pg'

const url = process.env.DISTLOCK_EXAMPLE_PG_URL || 'postgres://postgres@127.0.0.1:5432/postgres'
const WORKERS = ['w1', 'w2', 'w3']
const INCREMENTS = 20 // per worker
const LOCK = 'example-pg-counter'

/** Writes `value` if `token` is newer than the token of the last write; false if refused. */
async function fencedWrite(db, value, token) {
  const res = await db.query(
    'UPDATE distlock_example_counter SET value = $1, fence = $2::bigint WHERE id = 1 AND fence < $2::bigint',
    [value, token.toString()],
  )
  return res.rowCount === 1
}

const [role, id] = process.argv.slice(2)
const db = new pg.Client({ connectionString: url })
await db.connect()
const locks = new PostgresLockProvider({ connectionString: url })
const lock = locks.createLock(LOCK)

if (role === 'worker') {
  let refused = 0
  for (let i = 0; i < INCREMENTS; i++) {
    await lock.withLock(
      async (handle) => {
        const { rows } = await db.query('SELECT value FROM distlock_example_counter WHERE id = 1')
        // Between the read and the write the other workers run; only the lock keeps them out.
        await new Promise((resolve) => setTimeout(resolve, 2))
        if (!(await fencedWrite(db, rows[0].value + 1, handle.fencingToken))) refused++
      },
      { timeoutMs: 30_000 },
    )
  }
  console.log(JSON.stringify({ id, refused }))
} else {
  await db.query(
    'CREATE TABLE IF NOT EXISTS distlock_example_counter (id int PRIMARY KEY, value int NOT NULL, fence bigint NOT NULL)',
  )
  await db.query(
    `INSERT INTO distlock_example_counter VALUES (1, 0, 0)
     ON CONFLICT (id) DO UPDATE SET value = 0, fence = 0`,
  )
  const script = fileURLToPath(import.meta.url)
  const results = await Promise.all(
    WORKERS.map(
      (w) =>
        new Promise((resolve, reject) => {
          let out = ''
          const child = spawn(process.execPath, [script, 'worker', w], { stdio: ['ignore', 'pipe', 'inherit'] })
          child.stdout.on('data', (d) => (out += d))
          child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`${w} exited ${code}`))))
        }),
    ),
  )
  const refused = results.reduce((sum, r) => sum + r.refused, 0)
  const { rows } = await db.query('SELECT value, fence FROM distlock_example_counter WHERE id = 1')
  console.log(
    `counter ${rows[0].value} after ${WORKERS.length * INCREMENTS} increments by ${results.map((r) => r.id).join(', ')}; writes refused by the fence: ${refused}`,
  )

  // A holder that stalls past the end of its lock (here: it released) and writes late is
  // refused by the row, because a newer holder has written with a larger token since.
  const stale = await lock.acquire({ timeoutMs: 10_000 })
  const staleToken = stale.fencingToken
  await stale.release()
  await lock.withLock((handle) => fencedWrite(db, -1, handle.fencingToken), { timeoutMs: 10_000 })
  const accepted = await fencedWrite(db, -2, staleToken)
  const after = await db.query('SELECT value, fence FROM distlock_example_counter WHERE id = 1')
  console.log(
    `late write with token ${staleToken} ${accepted ? 'accepted' : 'refused'}; the row keeps value ${after.rows[0].value} from token ${after.rows[0].fence}`,
  )
  await db.query('DROP TABLE distlock_example_counter')
  if (Number(rows[0].value) !== WORKERS.length * INCREMENTS || refused !== 0 || accepted) process.exitCode = 1
}
await db.end()
await locks.close()
