// PostgreSQL for the lab: $DISTLOCK_TEST_PG_URL, else 127.0.0.1:5432 (user postgres), else a
// private cluster (initdb + pg_ctl on a free loopback port in a temp dir, stopped by
// stopServices()), which torture may also crash, restart and clear of sessions.
import { spawnSync } from 'node:child_process'
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { onCleanup } from './cleanup.mjs'
import { freePort, reachable } from './net.mjs'
import { run } from './process.mjs'
import { makeCertificates } from './tls.mjs'
import { pgBin, which } from './tools.mjs'

/** Whether `url` accepts a login (psql when installed; else a TCP connect is all we can check). */
function loginWorks(url) {
  if (!which('psql')) return true
  const res = spawnSync('psql', [url, '-Atc', 'SELECT 1'], { encoding: 'utf8', timeout: 10_000 })
  return res.status === 0
}

/** The port in a postgres:// URL. */
export function urlPort(url) {
  return Number(new URL(url).port || 5432)
}

/**
 * The user a private cluster runs as: postgres (or nobody) when we are root, as the server
 * refuses to run as root; `prefix` runs a command as that user, `owner` is its [uid, gid].
 */
function clusterUser() {
  if (process.getuid?.() !== 0) return { prefix: [], owner: null }
  const user = spawnSync('id', ['-u', 'postgres']).status === 0 ? 'postgres' : 'nobody'
  const uid = Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout)
  const gid = Number(spawnSync('id', ['-g', user], { encoding: 'utf8' }).stdout)
  return { prefix: ['runuser', '-u', user, '--'], owner: [uid, gid] }
}

/**
 * Starts a private PostgreSQL cluster (initdb + pg_ctl) on a free loopback port, as the postgres
 * (or nobody) user when running as root. With `ssl`, the server requires nothing but offers TLS
 * with a certificate for `localhost` from a fresh private CA (returned as `certFile`). With
 * `password`, TCP logins need it (SCRAM). Returns null when the server binaries are not installed.
 *
 * Faults (without blocking the event loop): `psql(sql)`, `terminateAll()` ends every other client
 * session, `restart()` is a crash (immediate shutdown) and restart with the same options.
 */
export async function startCluster({ ssl = false, password } = {}) {
  const initdb = pgBin('initdb')
  const pgCtl = pgBin('pg_ctl')
  if (!initdb || !pgCtl) return null
  const dir = mkdtempSync(join(tmpdir(), 'distlock-pg-'))
  const data = join(dir, 'data')
  const log = join(dir, 'log')
  const port = await freePort()
  const { prefix, owner } = clusterUser()
  if (owner) {
    chmodSync(dir, 0o755)
    chownSync(dir, ...owner)
  }
  const asOwner = (args) => [...prefix, ...args]
  const runSync = (args) => {
    const [cmd, ...rest] = asOwner(args)
    return spawnSync(cmd, rest, { encoding: 'utf8', timeout: 120_000 })
  }
  const auth = ['--auth=trust']
  if (password !== undefined) {
    // Local socket connections stay trusted; TCP logins need the password (SCRAM).
    const pwfile = join(dir, 'pwfile')
    writeFileSync(pwfile, `${password}\n`)
    if (owner) chownSync(pwfile, ...owner)
    auth.splice(0, 1, '--auth-local=trust', '--auth-host=scram-sha-256', `--pwfile=${pwfile}`)
  }
  let res = runSync([initdb, '-D', data, '-U', 'postgres', ...auth, '--no-sync', '-E', 'UTF8'])
  if (res.status !== 0) throw new Error(`initdb failed: ${res.stderr || res.error}`)
  let opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`
  let certFile
  if (ssl) {
    // A private CA (returned as certFile, what a client trusts) and a server certificate for
    // localhost signed by it.
    const made = makeCertificates(dir)
    certFile = made.caFile
    if (owner) {
      chownSync(made.keyFile, ...owner)
      chownSync(made.certFile, ...owner)
    }
    opts += ` -c ssl=on -c ssl_cert_file=${made.certFile} -c ssl_key_file=${made.keyFile}`
  }
  res = runSync([pgCtl, '-D', data, '-o', opts, '-l', log, '-w', 'start'])
  if (res.status !== 0) throw new Error(`pg_ctl start failed: ${res.stderr || res.error}`)
  const stop = () => {
    runSync([pgCtl, '-D', data, '-m', 'immediate', '-w', 'stop'])
    rmSync(dir, { recursive: true, force: true })
  }
  onCleanup(stop)
  const user = password === undefined ? 'postgres' : `postgres:${encodeURIComponent(password)}`
  const url = `postgres://${user}@127.0.0.1:${port}/postgres`
  const psql = async (sql) => {
    const out = await run('psql', [url, '-Atc', sql], 15_000)
    if (!out.ok) throw new Error(`psql ${sql} failed: ${out.stderr || out.err?.message}`)
    return out.stdout.trim()
  }
  return {
    url,
    port,
    certFile,
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
      const [cmd, ...rest] = asOwner([pgCtl, '-D', data, '-m', 'immediate', '-w', '-l', log, 'restart'])
      const out = await run(cmd, rest, 60_000)
      if (!out.ok) throw new Error(`pg_ctl restart failed: ${out.stderr || out.err?.message}`)
    },
    stop,
  }
}

/** A private cluster (startCluster) for the rows that break it: throws when it cannot be had. */
export async function privatePostgres() {
  const cluster = which('psql') ? await startCluster() : null
  if (!cluster) {
    throw new Error(
      'the PostgreSQL fault rows need the server binaries (initdb, pg_ctl) and psql to run a private cluster: ' +
        'Debian/Ubuntu: apt install postgresql; macOS: brew install postgresql',
    )
  }
  return cluster
}

/** The PostgreSQL URL for the tests; throws with install instructions when none can be had. */
export async function findPostgres() {
  const fromEnv = process.env.DISTLOCK_TEST_PG_URL
  if (fromEnv) {
    if (!loginWorks(fromEnv)) throw new Error(`DISTLOCK_TEST_PG_URL=${fromEnv} does not accept a login`)
    return { url: fromEnv, how: 'from DISTLOCK_TEST_PG_URL' }
  }
  const local = 'postgres://postgres@127.0.0.1:5432/postgres'
  if (process.env.DISTLOCK_TEST_PG !== 'private' && (await reachable(5432, 1000)) && loginWorks(local)) {
    return { url: local, how: 'the server on 127.0.0.1:5432' }
  }
  const cluster = await startCluster()
  if (cluster) return { url: cluster.url, how: 'a private cluster (initdb)' }
  throw new Error(
    'the tests need PostgreSQL and none was found: set DISTLOCK_TEST_PG_URL=postgres://user@host:port/db, ' +
      'run a server on 127.0.0.1:5432 accepting user postgres, or install the server binaries ' +
      '(Debian/Ubuntu: apt install postgresql; macOS: brew install postgresql) so a private cluster can be started',
  )
}
