// The fencing rows of the torture suite (issue 24): several worker processes take one Redis lock
// with a short lease and write one resource of a storage (PostgreSQL, MySQL, Redis, a file)
// through its fencing guard; for etcd the lock is an etcd lock, whose own key is the fence. Some holders freeze themselves (SIGSTOP) between the grant and the
// write; the runner continues each after its lease has run out, by which time a newer holder
// has usually written. A frozen holder's write that the storage accepts although a write with a
// larger token was accepted before it was continued is a stale write: the rows promise none,
// and report how many stale writes the guard rejected.
//
//   node torture/fencing.mjs                 the five guarded rows, on their own
//   node torture/fencing.mjs --broken        the same rows with the guard replaced by a plain
//                                            write: they show the stale writes the guard stops
//   node torture/fencing.mjs --only redis    rows whose storage matches
//   (torture/run.mjs registers the guarded rows as fencing/stale-holder/<storage>)
//   node torture/fencing.mjs --worker '<json>'   one worker (started by the rows)
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { rename, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = fileURLToPath(new URL('.', import.meta.url))
const require = createRequire(import.meta.url)

/** The bounds of a row. */
const ROW = {
  /** Worker processes contending for the lock. */
  workers: 4,
  /** The lock's lease: short, so that a frozen holder loses it quickly. */
  leaseMs: 200,
  /** How long a frozen holder stays stopped: well past its lease, so a newer holder gets in. */
  freezeMs: 600,
  /** The share of grants after which the holder freezes itself. */
  freezeRatio: 0.3,
  /** The row stops once this many holders froze and wrote (the trials)… */
  trials: 30,
  /** …or after this long, whichever comes first. */
  budgetMs: 45_000,
}

/**
 * etcd's bounds: its leases are whole seconds (2 s at least), and a lease that runs out is
 * revoked by the leader's next check (about every 500 ms), so a holder is frozen for longer,
 * and fewer trials fit the budget.
 */
const ETCD_ROW = { ...ROW, leaseMs: 2_000, freezeMs: 3_500, trials: 12, budgetMs: 75_000 }

const TABLE = 'torture_fencing_doc'
const FENCE_TABLE = 'torture_fencing_fence'

// ---------------------------------------------------------------------------------------------
// The storages: how a worker writes (guarded or plain) and how the runner reads the result

/** Each storage's connection, its write of `token` (the data is the token's text) and its read. */
const STORAGES = {
  async postgres(target) {
    const { Client } = require('pg')
    const db = new Client({ connectionString: target.url })
    await db.connect()
    const update = (q, token) =>
      q.query(`UPDATE ${TABLE} SET body = $2 WHERE resource = $1`, [target.resource, String(token)])
    return {
      guarded: (token, lib) =>
        lib.withFencedTransaction(db, { resource: target.resource, token, table: FENCE_TABLE }, (tx) =>
          update(tx, token),
        ),
      plain: (token) => update(db, token),
      read: async () =>
        (await db.query(`SELECT body FROM ${TABLE} WHERE resource = $1`, [target.resource])).rows[0]?.body,
      setup: async () => {
        await db.query(`CREATE TABLE IF NOT EXISTS ${TABLE} (resource text PRIMARY KEY, body text NOT NULL)`)
        await db.query(`INSERT INTO ${TABLE} VALUES ($1, '0')`, [target.resource])
      },
      close: () => db.end(),
    }
  },
  async mysql(target) {
    const mysql = require('mysql2/promise')
    const db = await mysql.createConnection(target.url)
    const update = (q, token) =>
      q.query(`UPDATE ${TABLE} SET body = ? WHERE resource = ?`, [String(token), target.resource])
    return {
      guarded: (token, lib) =>
        lib.withFencedTransaction(db, { resource: target.resource, token, table: FENCE_TABLE }, (tx) =>
          update(tx, token),
        ),
      plain: (token) => update(db, token),
      read: async () => (await db.query(`SELECT body FROM ${TABLE} WHERE resource = ?`, [target.resource]))[0][0]?.body,
      setup: async () => {
        await db.query(
          `CREATE TABLE IF NOT EXISTS ${TABLE} (resource VARCHAR(255) PRIMARY KEY, body VARCHAR(64) NOT NULL)`,
        )
        await db.query(`INSERT INTO ${TABLE} VALUES (?, '0')`, [target.resource])
      },
      close: () => db.end(),
    }
  },
  async redis(target) {
    const { Redis } = require('ioredis')
    const redis = new Redis(target.url)
    return {
      guarded: (token, lib) => lib.fencedSet(redis, target.resource, String(token), { token }),
      plain: (token) => redis.set(target.resource, String(token)),
      read: () => redis.get(target.resource),
      setup: async () => {},
      close: () => redis.quit(),
    }
  },
  async etcd(target) {
    const { Etcd3 } = require('etcd3')
    const etcd = new Etcd3({ hosts: target.endpoint })
    return {
      // The lock's own key is the fence: the write lands only while the holder's key stands.
      guarded: (token, lib, handle) => lib.fencedPut(handle, target.resource, String(token)),
      plain: (token) => etcd.put(target.resource).value(String(token)),
      read: async () => (await etcd.get(target.resource).string()) ?? undefined,
      setup: async () => {},
      close: async () => etcd.close(),
    }
  },
  async file(target) {
    const replace = async (data) => {
      // The plain write is atomic too (temporary file, rename): only the fence is missing.
      const temp = `${target.path}.${process.pid}.tmp`
      await writeFile(temp, data)
      await rename(temp, target.path)
    }
    return {
      guarded: (token, lib) => lib.fencedWriteFile(target.path, String(token), token),
      plain: (token) => replace(String(token)),
      read: async () => {
        try {
          return readFileSync(target.path, 'utf8')
        } catch {
          return undefined
        }
      },
      setup: async () => {},
      close: async () => {},
    }
  },
}

// ---------------------------------------------------------------------------------------------
// A worker: acquire, maybe freeze, write, report, release; until told to stop (stdin closes)

async function worker(cfg) {
  const lib = require('../')
  const store = await STORAGES[cfg.storage](cfg.target)
  const write = cfg.broken ? store.plain : (token, handle) => store.guarded(token, lib, handle)
  const locks =
    cfg.storage === 'etcd'
      ? new lib.EtcdLockProvider({ endpoints: cfg.target.endpoint, leaseMs: cfg.leaseMs })
      : new lib.RedisLockProvider({ urls: cfg.redisUrl, leaseMs: cfg.leaseMs })
  const lock = locks.createLock(cfg.name)
  const told = { stop: false }
  process.stdin.on('end', () => (told.stop = true)).resume()
  while (!told.stop) {
    let handle
    try {
      handle = await lock.acquire({ timeoutMs: 2_000 })
    } catch (err) {
      if (err.code === 'ERR_LOCK_TIMEOUT') continue
      throw err
    }
    const token = handle.fencingToken
    if (Math.random() < cfg.freezeRatio) {
      // Frozen between the grant (or a last isHeld check) and the write: the window fencing closes.
      console.log(`FREEZE ${token}`)
      process.kill(process.pid, 'SIGSTOP')
    }
    let outcome = 'accepted'
    try {
      await write(token, handle)
    } catch (err) {
      if (!(err instanceof lib.StaleFencingTokenError)) throw err
      outcome = 'rejected'
    }
    console.log(`WRITE ${token} ${outcome}`)
    await handle.release()
  }
  await locks.close()
  await store.close()
}

// ---------------------------------------------------------------------------------------------
// A row: the runner side

/**
 * Runs one row: `storage` with its `target`, the lock on `redisUrl`; `broken` writes plainly.
 * Resolves to the row's result as torture/run.mjs shapes it (metrics, violations, outcome).
 */
export async function runFencingRow({ storage, target, redisUrl, broken = false, bounds = ROW }) {
  const setup = await STORAGES[storage](target)
  await setup.setup()
  const cfg = {
    storage,
    target,
    redisUrl,
    broken,
    name: `torture:fencing:${storage}:${process.pid}:${Date.now()}`,
    ...bounds,
  }
  const state = {
    maxAccepted: -1n,
    trials: 0,
    effective: 0,
    rejectedFrozen: 0,
    rejectedOther: 0,
    staleAccepted: 0,
    accepted: 0,
    errors: [],
  }
  /** Per worker: the frozen write it owes, with the largest accepted token when it was continued. */
  const owed = new Map()
  const children = []
  let finish
  const done = new Promise((resolve) => (finish = resolve))
  const started = performance.now()
  const timer = setTimeout(() => finish(), bounds.budgetMs)

  const onLine = (child, line) => {
    const [what, text, outcome] = line.split(' ')
    if (what === 'FREEZE') {
      setTimeout(() => {
        owed.set(child, { token: BigInt(text), newerBefore: state.maxAccepted })
        child.kill('SIGCONT')
      }, bounds.freezeMs)
    } else if (what === 'WRITE') {
      const token = BigInt(text)
      const frozen = owed.get(child)
      if (frozen && frozen.token === token) {
        owed.delete(child)
        state.trials++
        const stale = frozen.newerBefore > token
        if (stale) state.effective++
        if (outcome === 'rejected') state.rejectedFrozen++
        else if (stale) state.staleAccepted++
        if (state.trials >= bounds.trials) finish()
      } else if (outcome === 'rejected') {
        state.rejectedOther++
      }
      if (outcome === 'accepted') {
        state.accepted++
        if (token > state.maxAccepted) state.maxAccepted = token
      }
    }
  }

  for (let i = 0; i < bounds.workers; i++) {
    const child = spawn(process.execPath, [join(HERE, 'fencing.mjs'), '--worker', JSON.stringify(cfg)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    children.push(child)
    let buf = ''
    child.stdout.on('data', (d) => {
      buf += d
      let nl
      while ((nl = buf.indexOf('\n')) >= 0) {
        onLine(child, buf.slice(0, nl))
        buf = buf.slice(nl + 1)
      }
    })
    let err = ''
    child.stderr.on('data', (d) => (err += d))
    child.on('exit', (code, signal) => {
      if (code !== 0) state.errors.push(`worker ${i} exited ${code ?? signal}: ${err.trim().split('\n')[0]}`)
    })
  }
  await done
  clearTimeout(timer)
  // Stop: continue any frozen worker, close its stdin, wait (bounded) for all to exit.
  await Promise.all(
    children.map(
      (child) =>
        new Promise((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve()
          const kill = setTimeout(() => child.kill('SIGKILL'), 10_000)
          child.on('exit', () => {
            clearTimeout(kill)
            resolve()
          })
          child.kill('SIGCONT')
          child.stdin.end()
          setTimeout(() => child.kill('SIGCONT'), bounds.freezeMs + 100)
        }),
    ),
  )
  const final = await setup.read()
  await setup.close()

  const seconds = Math.round((performance.now() - started) / 100) / 10
  const finalOk = final === String(state.maxAccepted)
  const violations = [...state.errors]
  if (broken) {
    if (state.staleAccepted === 0) violations.push('the plain write accepted no stale write: the row proved nothing')
  } else {
    if (state.staleAccepted > 0) violations.push(`${state.staleAccepted} stale writes accepted`)
    if (!finalOk)
      violations.push(`the storage holds ${final}, not the data of the largest accepted token ${state.maxAccepted}`)
    if (state.effective === 0) violations.push('no frozen holder woke up after a newer write: the row proved nothing')
  }
  if (state.trials === 0) violations.push('no holder froze')
  return {
    metrics: {
      grants: state.accepted + state.rejectedFrozen + state.rejectedOther,
      trials: state.trials,
      effectiveTrials: state.effective,
      rejections: state.rejectedFrozen + state.rejectedOther,
      staleAccepted: state.staleAccepted,
    },
    violations,
    outcome:
      `${state.trials} frozen holders woke up (${state.effective} after a newer write); ` +
      `${broken ? 'plain write' : 'guard'}: ${state.staleAccepted} stale writes accepted, ` +
      `${state.rejectedFrozen} stale writes rejected (+${state.rejectedOther} other rejections), ` +
      `${state.accepted} writes accepted; final data ${finalOk ? 'is' : 'is not'} the largest token's; ${seconds} s`,
  }
}

/** Where each storage's row writes: a fresh resource on the suite's servers, or a fresh file. */
const TARGETS = {
  postgres: async (shared) => ({ url: (await shared.pg()).url, resource: `torture-${process.pid}-${Date.now()}` }),
  mysql: async (shared) => ({ url: (await shared.mysql()).url, resource: `torture-${process.pid}-${Date.now()}` }),
  redis: async (shared) => ({
    url: (await shared.redis()).url,
    resource: `torture:fencing:data:${process.pid}:${Date.now()}`,
  }),
  etcd: async (shared) => ({
    endpoint: (await shared.etcd()).endpoint,
    resource: `torture/fencing/data/${process.pid}/${Date.now()}`,
  }),
  file: async () => ({ path: join(mkdtempSync(join(tmpdir(), 'distlock-torture-fencing-')), 'data.txt') }),
}

/**
 * The rows for torture/run.mjs, which passes its servers (`shared`): one per storage, the lock
 * on the shared Redis. Not in the smoke run, whose two minutes they would stretch.
 */
export function fencingRows(shared) {
  return Object.keys(TARGETS).map((storage) => {
    const bounds = storage === 'etcd' ? ETCD_ROW : ROW
    return {
      id: `fencing/stale-holder/${storage}`,
      type: 'fencing',
      fault: `holders SIGSTOP themselves between grant and write for ${bounds.freezeMs} ms (lease ${bounds.leaseMs} ms), ${Math.round(bounds.freezeRatio * 100)} % of grants; ${bounds.workers} processes`,
      backend: storage === 'etcd' ? 'etcd lock and storage' : `redis lock, ${storage} storage`,
      promise:
        'The storage accepts no stale write: a frozen holder whose write comes after an accepted write with a larger token is rejected (StaleFencingTokenError), and the storage ends with the largest token’s data.',
      smoke: null,
      /** Runs the row; `broken`: with a plain write instead of the guard. */
      async run(broken = false) {
        return runFencingRow({
          storage,
          target: await TARGETS[storage](shared),
          redisUrl: storage === 'etcd' ? undefined : (await shared.redis()).url,
          broken,
          bounds,
        })
      },
    }
  })
}

// ---------------------------------------------------------------------------------------------
// Standalone: node torture/fencing.mjs [--broken] [--only <storage>]

/** `fn`, called once: later calls return its first result. */
const once = (fn) => {
  let p
  return () => (p ??= fn())
}

async function main(argv) {
  const lab = await import('../lab/index.mjs')
  const shared = {
    pg: once(() => lab.findPostgres()),
    mysql: once(() => lab.findMysql()),
    redis: once(() => lab.startRedis()),
    etcd: once(() => lab.startEtcd()),
  }
  const broken = argv.includes('--broken')
  const only = argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : undefined
  let failed = 0
  try {
    for (const row of fencingRows(shared)) {
      if (only && !row.id.includes(only)) continue
      process.stdout.write(`${row.id}${broken ? ' (plain write)' : ''} … `)
      const res = await row.run(broken)
      const ok = res.violations.length === 0
      if (!ok) failed++
      console.log(`${ok ? 'ok' : 'BROKEN'}\n    ${res.outcome}`)
      for (const v of res.violations) console.log(`    ! ${v}`)
    }
  } finally {
    await lab.cleanupAll()
  }
  return failed === 0 ? 0 : 1
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2)
  if (argv[0] === '--worker') {
    worker(JSON.parse(argv[1])).then(
      () => process.exit(0),
      (err) => {
        console.error(err?.stack ?? err)
        process.exit(1)
      },
    )
  } else {
    process.exit(await main(argv))
  }
}
