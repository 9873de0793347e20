// Protecting a write with a fencing token checked by the storage. A lock can be lost while its
// holder is paused (a lease expires during a GC pause, a session drops); the paused holder may
// then write after the next holder did. distlock's guards make the write conditional on the
// token, atomically at the storage: a file (fencedWriteFile), and, when their URLs are set, a
// PostgreSQL row (withFencedTransaction on a `pg` client) and a Redis key (fencedSet on an
// `ioredis` client). Each keeps the highest token it has accepted and rejects a smaller one.
// On etcd (DISTLOCK_EXAMPLE_ETCD), the lock's own key is the fence: fencedPut writes only while
// the writer's key stands.
//
//   node examples/fencing.mjs
//   DISTLOCK_EXAMPLE_PG_URL=postgres://… DISTLOCK_EXAMPLE_REDIS=redis://… node examples/fencing.mjs
//   DISTLOCK_EXAMPLE_ETCD=http://127.0.0.1:2379 node examples/fencing.mjs
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import {
  EtcdLockProvider,
  StaleFencingTokenError,
  fencedPut,
  fencedSet,
  fencedWriteFile,
  withFencedTransaction,
} from 'distlock'

import { makeProvider } from './provider.mjs'

/** The storages: each a guarded write of `value` with `token`, and a read of what it holds. */
async function storages() {
  const dir = mkdtempSync(join(process.env.DISTLOCK_EXAMPLE_DIR ?? tmpdir(), 'fencing-'))
  const file = join(dir, 'row.txt')
  const list = [
    {
      name: 'file',
      write: (token, value) => fencedWriteFile(file, value, token),
      read: () => readFileSync(file, 'utf8'),
      close: () => {},
    },
  ]
  if (process.env.DISTLOCK_EXAMPLE_PG_URL) {
    const { default: pg } = await import('pg')
    const db = new pg.Client({ connectionString: process.env.DISTLOCK_EXAMPLE_PG_URL })
    await db.connect()
    const id = `example-${process.pid}-${Date.now()}`
    await db.query('CREATE TABLE IF NOT EXISTS example_fenced_rows (id text PRIMARY KEY, value text)')
    list.push({
      name: 'postgres',
      write: (token, value) =>
        withFencedTransaction(db, { resource: `row:${id}`, token }, (tx) =>
          tx.query(
            'INSERT INTO example_fenced_rows VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value',
            [id, value],
          ),
        ),
      read: async () => (await db.query('SELECT value FROM example_fenced_rows WHERE id = $1', [id])).rows[0].value,
      close: async () => {
        await db.query('DELETE FROM example_fenced_rows WHERE id = $1', [id])
        await db.end()
      },
    })
  }
  if (process.env.DISTLOCK_EXAMPLE_REDIS) {
    const { Redis } = await import('ioredis')
    const redis = new Redis(process.env.DISTLOCK_EXAMPLE_REDIS.split(',')[0])
    const key = `example:fenced-row:${process.pid}:${Date.now()}`
    list.push({
      name: 'redis',
      write: (token, value) => fencedSet(redis, key, value, { token }),
      read: () => redis.get(key),
      close: () => redis.quit(),
    })
  }
  return list
}

const provider = makeProvider()
const lock = provider.createLock('example-fenced-row')
for (const storage of await storages()) {
  // Worker A gets the lock, then stalls before writing; for this demonstration its lock ends
  // (release stands in for a lease that expired while A was paused).
  const a = await lock.acquire()
  const tokenA = a.fencingToken
  await a.release()

  // Worker B gets the lock next and writes.
  const b = await lock.acquire()
  await storage.write(b.fencingToken, 'written by B')
  await b.release()

  // A wakes up and writes with its old token: the storage refuses.
  try {
    await storage.write(tokenA, 'written by A (stale)')
    console.log(`${storage.name}: the stale write went through`)
    process.exitCode = 1
  } catch (err) {
    if (!(err instanceof StaleFencingTokenError)) throw err
    console.log(
      `${storage.name}: A's late write rejected: token ${err.token} is older than ${err.current}; the row still says "${await storage.read()}"`,
    )
  }
  await storage.close()
}
await provider.close()

if (process.env.DISTLOCK_EXAMPLE_ETCD) {
  const etcd = new EtcdLockProvider({ endpoints: process.env.DISTLOCK_EXAMPLE_ETCD.split(',') })
  const config = etcd.createLock(`example-fenced-config-${process.pid}`)
  const key = `example/fenced-config/${process.pid}`
  // A stops renewing (as a paused process would): its 2 s lease runs out.
  const a = await config.acquire({ leaseMs: 2_000, autoRenew: false })
  // B is granted once etcd has ended A's lease, and writes.
  const b = await config.acquire({ timeoutMs: 10_000 })
  await fencedPut(b, key, 'written by B')
  try {
    await fencedPut(a, key, 'written by A (stale)')
    console.log('etcd: the stale write went through')
    process.exitCode = 1
  } catch (err) {
    if (!(err instanceof StaleFencingTokenError)) throw err
    console.log(`etcd: A's late write rejected: token ${err.token} is older than ${err.current}; B still holds`)
  }
  await b.release()
  await etcd.close()
}
