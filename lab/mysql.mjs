// MySQL/MariaDB for the lab: $DISTLOCK_TEST_MYSQL_URL, else a private MariaDB server
// (mariadb-install-db + mariadbd on a free loopback port in a temp dir, with TLS, stopped by
// stopServices()).
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { onCleanup } from './cleanup.mjs'
import { freePort, waitFor } from './net.mjs'
import { spawnLogged, tail } from './process.mjs'
import { makeCertificates } from './tls.mjs'
import { mysqlServerBins, which } from './tools.mjs'

/** Whether a MySQL server on host:port sends its handshake greeting (protocol version 10). */
function mysqlGreets(host, port, ms = 1000) {
  return new Promise((resolve) => {
    const s = connect({ host, port })
    const done = (ok) => {
      s.destroy()
      resolve(ok)
    }
    s.setTimeout(ms, () => done(false))
    s.once('data', (d) => done(d.length > 4 && d[4] === 10))
    s.on('error', () => done(false))
  })
}

/**
 * Whether `url` (mysql://user:password@host:port/db) accepts a login over TCP, by the mariadb (or
 * mysql) client when installed; else whether the server greets, all we can check without one.
 */
async function mysqlLoginWorks(url, caFile) {
  const u = new URL(url)
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1')
  const port = u.port || '3306'
  const client = which('mariadb') || which('mysql')
  if (!client) return mysqlGreets(host, Number(port))
  const args = ['--no-defaults', '--protocol=TCP', '-h', host, '-P', port, '-u', decodeURIComponent(u.username)]
  const db = decodeURIComponent(u.pathname.slice(1))
  if (db) args.push('-D', db)
  if (/ssl/i.test(u.search)) args.push('--ssl')
  if (caFile) args.push(`--ssl-ca=${caFile}`)
  const res = spawnSync(client, [...args, '-Nse', 'SELECT 1'], {
    encoding: 'utf8',
    timeout: 10_000,
    env: { ...process.env, MYSQL_PWD: decodeURIComponent(u.password) },
  })
  return res.status === 0
}

/**
 * Starts a private MariaDB server: mariadb-install-db into a temp dir, then mariadbd on a free
 * loopback port (as root when running as root: --user=root). User root has an empty password,
 * by the unix socket in the temp dir and over TCP from 127.0.0.1; database `test` exists. TLS is
 * offered (not required) with a certificate for "localhost" from a fresh private CA (`caFile`).
 * Throws saying what to install when the server binaries are missing.
 */
export async function startMysql() {
  const bins = mysqlServerBins()
  if (!bins) {
    throw new Error(
      'the MySQL tests need a MariaDB server and none was found: set DISTLOCK_TEST_MYSQL_URL=mysql://user@host:port/db ' +
        'or install the server binaries (Debian/Ubuntu: apt-get install mariadb-server; macOS: brew install mariadb) ' +
        'so a private server can be started (or set DISTLOCK_MYSQLD to mariadbd)',
    )
  }
  const dir = mkdtempSync(join(tmpdir(), 'distlock-mysql-'))
  const data = join(dir, 'data')
  const socket = join(dir, 'mysqld.sock')
  const log = join(dir, 'error.log')
  const output = join(dir, 'output.log')
  const user = process.getuid?.() === 0 ? ['--user=root'] : []
  let proc
  const stop = () => {
    proc?.stop()
    rmSync(dir, { recursive: true, force: true })
  }
  onCleanup(stop)
  const fail = (what) => {
    const logs = [tail(output), tail(log)].filter(Boolean).join('\n')
    stop()
    return new Error(`${what}${logs ? `; its log ends:\n${logs}` : ''}`)
  }
  const innodb = ['--innodb-log-file-size=16M', '--innodb-buffer-pool-size=64M']
  const res = spawnSync(
    bins.install,
    [
      '--no-defaults',
      `--datadir=${data}`,
      ...user,
      '--auth-root-authentication-method=normal',
      '--skip-test-db',
      '--skip-name-resolve',
      ...innodb,
    ],
    { encoding: 'utf8', timeout: 120_000 },
  )
  if (res.status !== 0) {
    stop()
    throw new Error(`${bins.install} failed: ${(res.stdout + res.stderr).slice(-2000) || res.error}`)
  }
  const { caFile, certFile, keyFile } = makeCertificates(dir)
  const init = join(dir, 'init.sql')
  writeFileSync(
    init,
    [
      'CREATE DATABASE IF NOT EXISTS test;',
      "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';",
      "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;",
      '',
    ].join('\n'),
  )
  const port = await freePort()
  proc = spawnLogged(
    bins.server,
    [
      '--no-defaults',
      `--datadir=${data}`,
      ...user,
      `--port=${port}`,
      '--bind-address=127.0.0.1',
      `--socket=${socket}`,
      `--pid-file=${join(dir, 'mariadbd.pid')}`,
      `--log-error=${log}`,
      `--tmpdir=${dir}`,
      `--init-file=${init}`,
      '--skip-name-resolve',
      '--max-connections=1000',
      '--max-connect-errors=1000000',
      '--innodb-flush-log-at-trx-commit=2',
      ...innodb,
      `--ssl-ca=${caFile}`,
      `--ssl-cert=${certFile}`,
      `--ssl-key=${keyFile}`,
    ],
    output,
  )
  try {
    await waitFor(
      async () => proc.exited || (await mysqlGreets('127.0.0.1', port)),
      `mariadbd on port ${port} starting`,
      30_000,
    )
  } catch (err) {
    throw fail(err.message)
  }
  if (proc.exited) throw fail(`mariadbd (${bins.server}) exited at start on port ${port}`)
  const url = `mysql://root@127.0.0.1:${port}/test`
  if (!(await mysqlLoginWorks(url, caFile)))
    throw fail(`the private MariaDB server on port ${port} refused root's login`)
  return { url, caFile, port, socket, pid: proc.child.pid, stop }
}

/**
 * The MySQL URL for the tests: $DISTLOCK_TEST_MYSQL_URL (with $DISTLOCK_TEST_MYSQL_CA as its
 * `caFile`), else a private MariaDB server (startMysql). Throws with install instructions.
 */
export async function findMysql() {
  const fromEnv = process.env.DISTLOCK_TEST_MYSQL_URL
  if (fromEnv) {
    if (!(await mysqlLoginWorks(fromEnv, process.env.DISTLOCK_TEST_MYSQL_CA))) {
      throw new Error(`DISTLOCK_TEST_MYSQL_URL=${fromEnv} does not accept a login`)
    }
    const u = new URL(fromEnv)
    return {
      url: fromEnv,
      how: 'from DISTLOCK_TEST_MYSQL_URL',
      caFile: process.env.DISTLOCK_TEST_MYSQL_CA || undefined,
      port: Number(u.port || 3306),
      socket: undefined,
      pid: undefined,
    }
  }
  const server = await startMysql()
  return { ...server, how: 'a private MariaDB server (mariadb-install-db)' }
}
