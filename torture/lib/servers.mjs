// Private servers for the torture suite, on free loopback ports, built on what
// scripts/test-services.mjs already starts (startRedis, startRedisCluster, startCluster,
// findPostgres) plus what faults need: a Redis server killed and restarted empty on its own port,
// a Sentinel group that can fail over, a PostgreSQL cluster that can be restarted and whose
// sessions can be terminated. cleanupAll() stops everything, also the proxies registered here.
import { execFile, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'

import {
  findPostgres,
  redisServerBin,
  startCluster,
  startRedis,
  startRedisCluster,
  stopServices,
} from '../../scripts/test-services.mjs'

const cleanups = []

/** Runs `fn` in cleanupAll(), before the test-services servers are stopped. */
export function onCleanup(fn) {
  cleanups.push(fn)
}

/** Stops every server, proxy and process this module (and test-services) started. */
export async function cleanupAll() {
  for (const fn of cleanups.splice(0).toReversed()) {
    try {
      await fn()
    } catch {}
  }
  stopServices()
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` every 25 ms until it returns truthy, for at most `ms`; throws naming `what`. */
export async function waitFor(check, what, ms = 10_000) {
  const deadline = performance.now() + ms
  while (performance.now() < deadline) {
    if (await check()) return
    await sleep(25)
  }
  throw new Error(`${what} did not happen within ${ms} ms`)
}

function which(cmd) {
  const res = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' })
  return res.status === 0 ? res.stdout.trim() : null
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
    srv.on('error', reject)
  })
}

/** Whether 127.0.0.1:`port` accepts a TCP connection within `ms`. */
export function reachable(port, ms = 300) {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    const done = (ok) => {
      s.destroy()
      resolve(ok)
    }
    s.setTimeout(ms, () => done(false))
    s.on('connect', () => done(true))
    s.on('error', () => done(false))
  })
}

/** Runs a command without blocking the event loop (the proxies live in this process). */
function run(cmd, args, timeoutMs = 15_000) {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ ok: !err, stdout: stdout ?? '', stderr: stderr ?? '', err })
    })
  })
}

let cliPath
function redisCliBin() {
  cliPath ??= which('redis-cli')
  if (!cliPath) throw new Error('redis-cli was not found; it comes with Redis (Debian: apt-get install redis-tools)')
  return cliPath
}

/** `redis-cli -p <port> args…`; resolves to its output (throws when it fails). */
export async function redisCli(port, ...args) {
  const res = await run(redisCliBin(), ['-h', '127.0.0.1', '-p', String(port), ...args], 5_000)
  if (!res.ok) throw new Error(`redis-cli -p ${port} ${args.join(' ')} failed: ${res.stderr || res.err?.message}`)
  return res.stdout.trim()
}

/** A redis-server of our own on a given port (used to restart one empty on its old port). */
async function spawnRedisOn(port, args) {
  const dir = mkdtempSync(join(tmpdir(), 'distlock-torture-redis-'))
  const child = spawn(
    redisServerBin(),
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...args],
    { stdio: 'ignore' },
  )
  let exited = false
  child.on('exit', () => (exited = true))
  const stop = () => {
    if (!exited) {
      try {
        process.kill(child.pid, 'SIGCONT')
      } catch {}
      child.kill('SIGKILL')
    }
    rmSync(dir, { recursive: true, force: true })
  }
  onCleanup(stop)
  await waitFor(async () => exited || (await reachable(port)), `redis-server restarting on port ${port}`)
  if (exited) throw new Error(`redis-server exited at start on port ${port}`)
  return { pid: child.pid, stop, exited: () => exited }
}

/**
 * One redis-server on a free loopback port: pause (SIGSTOP) / resume (SIGCONT), kill9 (kill -9,
 * stays down), restartEmpty (kill -9 if running, then a fresh empty server on the same port).
 */
export async function redisSingle(args = []) {
  const first = await startRedis(args)
  const port = first.port
  let pid = first.pid
  let down = false
  const server = {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return pid
    },
    pause: () => process.kill(pid, 'SIGSTOP'),
    resume: () => process.kill(pid, 'SIGCONT'),
    async kill9() {
      if (down) return
      down = true
      try {
        process.kill(pid, 'SIGCONT')
        process.kill(pid, 'SIGKILL')
      } catch {}
      await waitFor(async () => !(await reachable(port, 100)), `redis-server on port ${port} dying`, 5_000)
    },
    async restartEmpty() {
      await server.kill9()
      const proc = await spawnRedisOn(port, args)
      pid = proc.pid
      down = false
    },
    cli: (...a) => redisCli(port, ...a),
    stop: () => first.stop(),
  }
  return server
}

/** `n` independent servers for RedLock. */
export async function redlock(n) {
  const servers = []
  for (let i = 0; i < n; i++) servers.push(await redisSingle())
  return { servers, urls: servers.map((s) => s.url) }
}

/** A three-master Redis Cluster (startRedisCluster). */
export async function redisCluster() {
  return startRedisCluster()
}

/**
 * A Sentinel group: a master, one replica and one sentinel (quorum 1) watching them as
 * `mymaster`. failover() promotes the replica (SENTINEL FAILOVER) and waits until the sentinel
 * names it and it answers as master.
 */
export async function sentinelGroup(name = 'mymaster') {
  const master = await redisSingle()
  // Writable, so a row can take keys away from it: a replica that never received a grant
  // (replication is asynchronous) and is promoted.
  const replica = await redisSingle(['--replicaof', '127.0.0.1', String(master.port), '--replica-read-only', 'no'])
  await waitFor(
    async () => (await replica.cli('INFO', 'replication')).includes('master_link_status:up'),
    'the replica syncing with its master',
  )
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'distlock-torture-sentinel-'))
  const conf = join(dir, 'sentinel.conf')
  writeFileSync(
    conf,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      `sentinel monitor ${name} 127.0.0.1 ${master.port} 1`,
      `sentinel down-after-milliseconds ${name} 1000`,
      `sentinel failover-timeout ${name} 5000`,
      '',
    ].join('\n'),
  )
  const child = spawn(redisServerBin(), [conf, '--sentinel'], { stdio: 'ignore' })
  let exited = false
  child.on('exit', () => (exited = true))
  onCleanup(() => {
    if (!exited) child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  })
  await waitFor(async () => exited || (await reachable(port)), `redis sentinel on port ${port} starting`)
  if (exited) throw new Error(`redis-server --sentinel exited at start on port ${port}`)
  const sentinelCli = (...a) => redisCli(port, ...a)
  // The sentinel learns of the replica from the master's INFO; failover needs it known and healthy.
  await waitFor(
    async () => {
      const out = await sentinelCli('SENTINEL', 'replicas', name)
      return out.includes(String(replica.port)) && !/s_down|disconnected/.test(out)
    },
    'the sentinel discovering the replica',
    20_000,
  )
  const masterPort = async () => Number((await sentinelCli('SENTINEL', 'get-master-addr-by-name', name)).split('\n')[1])
  return {
    url: `redis-sentinel://127.0.0.1:${port}/0?sentinelServiceName=${name}`,
    master,
    replica,
    sentinelPort: port,
    masterPort,
    /** Promotes the replica; resolves once the sentinel names it and it is a writable master. */
    async failover() {
      await sentinelCli('SENTINEL', 'FAILOVER', name)
      await waitFor(
        async () =>
          (await masterPort()) === replica.port && (await replica.cli('INFO', 'replication')).includes('role:master'),
        'the sentinel promoting the replica',
        20_000,
      )
    },
  }
}

let sharedPg
/** The PostgreSQL the tests use (DISTLOCK_TEST_PG_URL, 127.0.0.1:5432, or a private cluster). */
export async function sharedPostgres() {
  sharedPg ??= findPostgres()
  return sharedPg
}

function pgCtlBin() {
  const onPath = which('pg_ctl')
  if (onPath) return onPath
  const res = spawnSync('sh', ['-c', 'ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1'], {
    encoding: 'utf8',
  })
  return res.stdout.trim() || null
}

/** The port in a postgres:// URL. */
export function urlPort(url) {
  return Number(new URL(url).port || 5432)
}

/**
 * A private PostgreSQL cluster (startCluster) that this process may restart (`pg_ctl restart -m
 * immediate`, a crash and recovery) and whose client sessions it may end (`pg_terminate_backend`).
 */
export async function privatePostgres() {
  const cluster = await startCluster()
  const pgCtl = pgCtlBin()
  if (!cluster || !pgCtl || !which('psql')) {
    throw new Error(
      'the PostgreSQL fault rows need the server binaries (initdb, pg_ctl) and psql to run a private cluster: ' +
        'Debian/Ubuntu: apt install postgresql; macOS: brew install postgresql',
    )
  }
  const psql = async (sql) => {
    const res = await run('psql', [cluster.url, '-Atc', sql], 15_000)
    if (!res.ok) throw new Error(`psql ${sql} failed: ${res.stderr || res.err?.message}`)
    return res.stdout.trim()
  }
  const dataDir = await psql('SHOW data_directory')
  // startCluster runs the server as postgres (or nobody) when we are root: pg_ctl must too.
  let prefix = []
  if (process.getuid?.() === 0) {
    const uid = statSync(dataDir).uid
    const user = spawnSync('id', ['-nu', String(uid)], { encoding: 'utf8' }).stdout.trim()
    prefix = ['runuser', '-u', user, '--']
  }
  const ctl = async (args) => {
    const [cmd, ...rest] = [...prefix, pgCtl, '-D', dataDir, ...args]
    return run(cmd, rest, 60_000)
  }
  return {
    url: cluster.url,
    port: cluster.port,
    psql,
    /** Ends every client session but the one asking; resolves to how many. */
    async terminateAll() {
      return Number(
        await psql(
          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
        ),
      )
    },
    /** A crash (immediate shutdown) and restart with the same options; resolves when it accepts logins. */
    async restart() {
      const res = await ctl(['-m', 'immediate', '-w', '-l', join(dirname(dataDir), 'log'), 'restart'])
      if (!res.ok) throw new Error(`pg_ctl restart failed: ${res.stderr || res.err?.message}`)
    },
    stop: () => cluster.stop(),
  }
}
