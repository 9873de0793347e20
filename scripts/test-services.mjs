// Finds the servers the tests need, or starts private ones, or fails saying how to get them.
// PostgreSQL: $DISTLOCK_TEST_PG_URL, else 127.0.0.1:5432 (user postgres), else a private cluster
// (initdb + pg_ctl on a free loopback port in a temp dir, stopped by stopServices()).
// Redis: never a shared server; every test starts its own redis-server processes on free
// loopback ports (startRedis, startRedisCluster) and stops them after.
// MySQL/MariaDB: $DISTLOCK_TEST_MYSQL_URL, else a private MariaDB server (mariadb-install-db +
// mariadbd on a free loopback port in a temp dir, with TLS, stopped by stopServices()).
// etcd: never a shared server; tests start their own members (startEtcd, startEtcdCluster).
import { spawn, spawnSync } from 'node:child_process'
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { request } from 'node:http'
import { createServer, connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const stops = []

function reachable(host, port, ms = 1000) {
  return new Promise((resolve) => {
    const s = connect({ host, port })
    const done = (ok) => {
      s.destroy()
      resolve(ok)
    }
    s.setTimeout(ms, () => done(false))
    s.on('connect', () => done(true))
    s.on('error', () => done(false))
  })
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

function which(cmd) {
  const res = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' })
  return res.status === 0 ? res.stdout.trim() : null
}

/** initdb/pg_ctl from PATH or Debian's versioned directories. */
function pgBin(tool) {
  const onPath = which(tool)
  if (onPath) return onPath
  const base = '/usr/lib/postgresql'
  if (!existsSync(base)) return null
  for (const v of readdirSync(base).toSorted().toReversed()) {
    const p = join(base, v, 'bin', tool)
    if (existsSync(p)) return p
  }
  return null
}

/** Whether `url` accepts a login (psql when installed; else a TCP connect is all we can check). */
function loginWorks(url) {
  if (!which('psql')) return true
  const res = spawnSync('psql', [url, '-Atc', 'SELECT 1'], { encoding: 'utf8', timeout: 10_000 })
  return res.status === 0
}

/**
 * A private CA (`caFile`, what a client trusts) and a certificate for "localhost" signed by it
 * (`certFile`, `keyFile`), made with openssl in `dir`.
 */
function makeCertificates(dir) {
  const caFile = join(dir, 'ca.crt')
  const caKey = join(dir, 'ca.key')
  const certFile = join(dir, 'server.crt')
  const keyFile = join(dir, 'server.key')
  const csr = join(dir, 'server.csr')
  const ext = join(dir, 'server.ext')
  writeFileSync(ext, 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n')
  const steps = [
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=distlock test CA',
      '-keyout',
      caKey,
      '-out',
      caFile,
    ],
    ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', keyFile, '-out', csr],
    [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      caFile,
      '-CAkey',
      caKey,
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      ext,
      '-out',
      certFile,
    ],
  ]
  for (const step of steps) {
    const res = spawnSync('openssl', step, { encoding: 'utf8', timeout: 60_000 })
    if (res.status !== 0) throw new Error(`openssl could not make a test certificate: ${res.stderr || res.error}`)
  }
  chmodSync(keyFile, 0o600)
  return { caFile, certFile, keyFile }
}

/**
 * Starts a private PostgreSQL cluster (initdb + pg_ctl) on a free loopback port, as the postgres
 * (or nobody) user when running as root. With `ssl`, the server requires nothing but offers TLS
 * with a fresh self-signed certificate for `localhost` (returned as `certFile`).
 * Returns null when the server binaries are not installed.
 */
export async function startCluster({ ssl = false, password } = {}) {
  const initdb = pgBin('initdb')
  const pgCtl = pgBin('pg_ctl')
  if (!initdb || !pgCtl) return null
  const dir = mkdtempSync(join(tmpdir(), 'distlock-pg-'))
  const data = join(dir, 'data')
  const port = await freePort()
  let prefix = []
  let owner = null
  if (process.getuid?.() === 0) {
    const user = spawnSync('id', ['-u', 'postgres']).status === 0 ? 'postgres' : 'nobody'
    const uid = Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout)
    const gid = Number(spawnSync('id', ['-g', user], { encoding: 'utf8' }).stdout)
    owner = [uid, gid]
    chmodSync(dir, 0o755)
    chownSync(dir, uid, gid)
    prefix = ['runuser', '-u', user, '--']
  }
  const run = (args) => {
    const [cmd, ...rest] = [...prefix, ...args]
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
  let res = run([initdb, '-D', data, '-U', 'postgres', ...auth, '--no-sync', '-E', 'UTF8'])
  if (res.status !== 0) throw new Error(`initdb failed: ${res.stderr || res.error}`)
  let opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`
  let certFile
  if (ssl) {
    // A private CA (returned as certFile, what a client trusts) and a server certificate for
    // localhost signed by it.
    const made = makeCertificates(dir)
    certFile = made.caFile
    const serverCrt = made.certFile
    const keyFile = made.keyFile
    if (owner) {
      chownSync(keyFile, ...owner)
      chownSync(serverCrt, ...owner)
    }
    opts += ` -c ssl=on -c ssl_cert_file=${serverCrt} -c ssl_key_file=${keyFile}`
  }
  res = run([pgCtl, '-D', data, '-o', opts, '-l', join(dir, 'log'), '-w', 'start'])
  if (res.status !== 0) throw new Error(`pg_ctl start failed: ${res.stderr || res.error}`)
  const stop = () => {
    run([pgCtl, '-D', data, '-m', 'immediate', '-w', 'stop'])
    rmSync(dir, { recursive: true, force: true })
  }
  stops.push(stop)
  const user = password === undefined ? 'postgres' : `postgres:${encodeURIComponent(password)}`
  return { url: `postgres://${user}@127.0.0.1:${port}/postgres`, port, certFile, stop }
}

/** The PostgreSQL URL for the tests; throws with install instructions when none can be had. */
export async function findPostgres() {
  const fromEnv = process.env.DISTLOCK_TEST_PG_URL
  if (fromEnv) {
    if (!loginWorks(fromEnv)) throw new Error(`DISTLOCK_TEST_PG_URL=${fromEnv} does not accept a login`)
    return { url: fromEnv, how: 'from DISTLOCK_TEST_PG_URL' }
  }
  const local = 'postgres://postgres@127.0.0.1:5432/postgres'
  if (process.env.DISTLOCK_TEST_PG !== 'private' && (await reachable('127.0.0.1', 5432)) && loginWorks(local)) {
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

export function stopServices() {
  for (const stop of stops.splice(0).toReversed()) {
    try {
      stop()
    } catch {
      // best effort on the way out
    }
  }
}

/**
 * The programs the suite runs itself, each with the variable that overrides where it is, the
 * Debian package that has it and the Homebrew formula. `ensureTools()` installs the missing ones
 * (as root on a system with apt-get); each lookup below names the package when it is missing.
 */
const TOOLS = {
  'redis-server': { env: 'DISTLOCK_REDIS_SERVER', deb: 'redis-server', brew: 'redis', paths: [] },
  etcd: { env: 'DISTLOCK_ETCD_BIN', deb: 'etcd-server', brew: 'etcd', paths: [] },
  etcdctl: { env: 'DISTLOCK_ETCDCTL_BIN', deb: 'etcd-client', brew: 'etcd', paths: [] },
  mariadbd: { env: 'DISTLOCK_MYSQLD', deb: 'mariadb-server', brew: 'mariadb', paths: ['/usr/sbin/mariadbd'] },
}

function findTool(name) {
  const t = TOOLS[name]
  return process.env[t.env] || which(name) || t.paths.find((p) => existsSync(p)) || null
}

function missingTool(name, why) {
  const t = TOOLS[name]
  return new Error(
    `${name} was not found; ${why}. Install it (Debian/Ubuntu: apt-get install ${t.deb}; macOS: brew install ${t.brew}) ` +
      `or set ${t.env} to its path`,
  )
}

/**
 * Makes sure the programs in `names` are there. Missing ones are installed from Debian's packages
 * when this runs as root where apt-get exists (saying what it installs, unless
 * DISTLOCK_NO_INSTALL=1); otherwise the error gives the one command to run.
 */
export function ensureTools(names) {
  const missing = names.filter((n) => !findTool(n))
  if (missing.length === 0) return
  const pkgs = [...new Set(missing.map((n) => TOOLS[n].deb))]
  const command = `apt-get install -y --no-install-recommends ${pkgs.join(' ')}`
  const canInstall = process.getuid?.() === 0 && which('apt-get') && process.env.DISTLOCK_NO_INSTALL !== '1'
  if (!canInstall) {
    const brew = [...new Set(missing.map((n) => TOOLS[n].brew))].join(' ')
    throw new Error(
      `the tests need ${missing.join(', ')}, which ${missing.length > 1 ? 'are' : 'is'} not installed. ` +
        `Install: ${process.getuid?.() === 0 ? '' : 'sudo '}${command} (macOS: brew install ${brew})`,
    )
  }
  console.log(`distlock test: ${missing.join(', ')} missing; installing Debian's ${pkgs.join(', ')}: ${command}`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const install = () => spawnSync('sh', ['-c', command], { stdio: 'inherit', env, timeout: 600_000 }).status === 0
  // A machine whose package lists were never fetched knows no package: fetch them once, then retry.
  if (!install()) {
    console.log('distlock test: the install failed; fetching the package lists (apt-get update) and trying once more')
    spawnSync('apt-get', ['update'], { stdio: 'inherit', env, timeout: 600_000 })
    if (!install())
      throw new Error(`could not install ${pkgs.join(', ')} (${command} failed): install them and run again`)
  }
  const still = missing.filter((n) => !findTool(n))
  if (still.length > 0) throw new Error(`${still.join(', ')} still not found after installing ${pkgs.join(', ')}`)
}

/** The redis-server binary ($DISTLOCK_REDIS_SERVER, else PATH), or an error saying how to get it. */
export function redisServerBin() {
  const bin = findTool('redis-server')
  if (!bin) throw missingTool('redis-server', 'the Redis tests start their own servers')
  return bin
}

/** The etcdctl binary ($DISTLOCK_ETCDCTL_BIN, else PATH), or an error saying how to get it. */
export function etcdctlBin() {
  const bin = findTool('etcdctl')
  if (!bin) throw missingTool('etcdctl', "the etcd interop tests run etcd's own client")
  return bin
}

let exitHook = false

/** Stops every service when the process exits, also when a test worker ends without its afterAll. */
function stopAtExit() {
  if (exitHook) return
  exitHook = true
  process.once('exit', stopServices)
}

async function waitFor(check, what, ms = 10_000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`${what} did not happen within ${ms} ms`)
}

/**
 * A redis-server of its own on a free loopback port; extra `args` as on its command line. With
 * `tls`, it speaks only TLS, with a certificate for "localhost" from a fresh private CA
 * (`caFile`), and the URL is `rediss://localhost:<port>`. Its certificate and key (`certFile`,
 * `keyFile`, CN localhost, signed by that CA) also serve as a client identity for
 * `--tls-auth-clients yes`.
 */
export async function startRedis(args = [], { tls = false } = {}) {
  const bin = redisServerBin()
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'distlock-redis-'))
  let caFile
  let certFile
  let keyFile
  let listen = ['--port', String(port)]
  if (tls) {
    const made = makeCertificates(dir)
    ;({ caFile, certFile, keyFile } = made)
    listen = [
      '--port',
      '0',
      '--tls-port',
      String(port),
      '--tls-cert-file',
      made.certFile,
      '--tls-key-file',
      made.keyFile,
    ]
    listen.push('--tls-ca-cert-file', made.caFile, '--tls-auth-clients', 'no')
  }
  const child = spawn(
    bin,
    [...listen, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...args],
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
  stops.push(stop)
  stopAtExit() // no redis-server outlives the run
  await waitFor(
    async () => exited || (await reachable('127.0.0.1', port, 200)),
    `redis-server on port ${port} starting`,
  )
  if (exited) throw new Error(`redis-server (${bin}) exited at start on port ${port}`)
  return {
    url: tls ? `rediss://localhost:${port}` : `redis://127.0.0.1:${port}`,
    caFile,
    certFile,
    keyFile,
    port,
    pid: child.pid,
    pause: () => process.kill(child.pid, 'SIGSTOP'),
    resume: () => process.kill(child.pid, 'SIGCONT'),
    stop,
  }
}

/** A Redis Cluster of three masters on loopback (needs redis-cli, which comes with Redis). */
export async function startRedisCluster() {
  const nodes = []
  for (let i = 0; i < 3; i++)
    nodes.push(await startRedis(['--cluster-enabled', 'yes', '--cluster-node-timeout', '5000']))
  const cli = which('redis-cli')
  if (!cli) throw new Error('redis-cli was not found; it comes with Redis (Debian: apt-get install redis-tools)')
  const res = spawnSync(
    cli,
    ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'],
    { encoding: 'utf8', timeout: 30_000 },
  )
  if (res.status !== 0) throw new Error(`redis-cli --cluster create failed: ${res.stdout}${res.stderr}`)
  for (const n of nodes) {
    await waitFor(
      () =>
        spawnSync(cli, ['-p', String(n.port), 'cluster', 'info'], { encoding: 'utf8' }).stdout.includes(
          'cluster_state:ok',
        ),
      'the cluster becoming ready',
    )
  }
  const [first, ...rest] = nodes
  return {
    url: `redis-cluster://127.0.0.1:${first.port}?${rest.map((n) => `node=127.0.0.1:${n.port}`).join('&')}`,
    nodes,
    stop: () => nodes.forEach((n) => n.stop()),
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** The last `chars` characters of a log file ('' when there is none). */
function tail(file, chars = 2000) {
  try {
    return readFileSync(file, 'utf8').slice(-chars).trim()
  } catch {
    return ''
  }
}

/**
 * Spawns a server with its output going to `log` (kept out of the test output) and tracks its
 * exit. `kill(signal)` sends a signal while it runs; `stop()` kills it for good (SIGCONT first, in
 * case a test paused it) and may be called again.
 */
function spawnLogged(bin, args, log, env = process.env) {
  const fd = openSync(log, 'a')
  let child
  try {
    child = spawn(bin, args, { stdio: ['ignore', fd, fd], env })
  } finally {
    closeSync(fd)
  }
  const proc = { child, exited: false }
  child.on('exit', () => (proc.exited = true))
  child.on('error', () => (proc.exited = true))
  proc.kill = (signal = 'SIGKILL') => !proc.exited && child.kill(signal)
  proc.stop = () => {
    if (proc.exited) return
    child.kill('SIGCONT')
    child.kill('SIGKILL')
  }
  return proc
}

/** `count` distinct free loopback ports. */
async function freePorts(count) {
  const ports = new Set()
  for (let i = 0; i < count * 20 && ports.size < count; i++) ports.add(await freePort())
  if (ports.size < count) throw new Error(`could not find ${count} free loopback ports`)
  return [...ports]
}

/** mariadbd and its install script ($DISTLOCK_MYSQLD, else PATH, else /usr/sbin), or null. */
function mysqlServerBins() {
  const server = findTool('mariadbd') || ['/usr/sbin/mysqld'].find((p) => existsSync(p)) || which('mysqld')
  const install = which('mariadb-install-db') || which('mysql_install_db')
  return server && install ? { server, install } : null
}

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
  stops.push(stop)
  stopAtExit() // no mariadbd outlives the run
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

/** The etcd binary ($DISTLOCK_ETCD_BIN, else PATH), or an error saying how to get it. */
export function etcdBin() {
  const bin = findTool('etcd')
  if (!bin) throw missingTool('etcd', 'the etcd tests start their own members')
  return bin
}

/** GET (or POST `body` as JSON) on an etcd member's HTTP gateway: the parsed answer, or null on any failure. */
function etcdHttp(endpoint, path, body, ms = 1000) {
  return new Promise((resolve) => {
    const req = request(
      `${endpoint}${path}`,
      {
        method: body === undefined ? 'GET' : 'POST',
        agent: false,
        timeout: ms,
        headers: { 'content-type': 'application/json' },
      },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (d) => (text += d))
        res.on('error', () => resolve(null))
        res.on('end', () => {
          try {
            resolve(res.statusCode === 200 ? JSON.parse(text) : null)
          } catch {
            resolve(null)
          }
        })
      },
    )
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(null))
    req.end(body === undefined ? undefined : JSON.stringify(body))
  })
}

/**
 * `n` etcd members of one new cluster, each on two free loopback ports (client, peer) with a data
 * dir in one temp dir; resolves once every member reports healthy (30 s at most). Output goes to
 * a log per member, shown only when the cluster fails to start.
 */
async function startEtcdMembers(n) {
  const bin = etcdBin()
  const dir = mkdtempSync(join(tmpdir(), 'distlock-etcd-'))
  const ports = await freePorts(2 * n)
  const specs = Array.from({ length: n }, (_, i) => ({
    name: `m${i}`,
    endpoint: `http://127.0.0.1:${ports[2 * i]}`,
    peer: `http://127.0.0.1:${ports[2 * i + 1]}`,
  }))
  const initialCluster = specs.map((s) => `${s.name}=${s.peer}`).join(',')
  const token = `distlock-${process.pid}-${Date.now()}`
  const env = { ...process.env, ETCDCTL_API: '3' }
  const members = specs.map(({ name, endpoint, peer }) => {
    mkdirSync(join(dir, name))
    const log = join(dir, `${name}.log`)
    const proc = spawnLogged(
      bin,
      [
        '--name',
        name,
        '--data-dir',
        join(dir, name, 'data'),
        '--listen-client-urls',
        endpoint,
        '--advertise-client-urls',
        endpoint,
        '--listen-peer-urls',
        peer,
        '--initial-advertise-peer-urls',
        peer,
        '--initial-cluster',
        initialCluster,
        '--initial-cluster-state',
        'new',
        '--initial-cluster-token',
        token,
        '--logger',
        'zap',
        '--log-outputs',
        'stderr',
        '--log-level',
        'error',
      ],
      log,
      env,
    )
    return { name, endpoint, pid: proc.child.pid, kill: proc.kill, stop: proc.stop, proc, log }
  })
  const stop = () => {
    for (const m of members) m.stop()
    rmSync(dir, { recursive: true, force: true })
  }
  stops.push(stop)
  stopAtExit() // no etcd outlives the run
  const healthy = async () => {
    const answers = await Promise.all(members.map((m) => etcdHttp(m.endpoint, '/health')))
    return answers.every((a) => a?.health === 'true')
  }
  let problem = null
  try {
    await waitFor(
      async () => members.some((m) => m.proc.exited) || (await healthy()),
      `etcd (${n} member${n > 1 ? 's' : ''}, ${bin}) becoming healthy`,
      30_000,
    )
    const dead = members.find((m) => m.proc.exited)
    if (dead) problem = `etcd member ${dead.name} (${bin}) exited at start`
  } catch (err) {
    problem = err.message
  }
  if (problem) {
    const logs = members.map((m) => `[${m.name}] ${tail(m.log, 1500)}`).join('\n')
    stop()
    throw new Error(`${problem}; the logs end:\n${logs}`)
  }
  return {
    dir,
    members: members.map((m) => ({ name: m.name, endpoint: m.endpoint, pid: m.pid, kill: m.kill, stop: m.stop })),
    stop,
  }
}

/**
 * One private etcd member on free loopback ports in a temp data dir. `kill(signal)` signals it
 * (default SIGKILL; SIGSTOP pauses it); `stop()` kills it and removes its data.
 */
export async function startEtcd() {
  const { members, stop } = await startEtcdMembers(1)
  const [m] = members
  return { endpoint: m.endpoint, pid: m.pid, kill: m.kill, stop }
}

/**
 * A private etcd cluster of `n` members on loopback. A member's `kill(signal)` signals it and its
 * `stop()` kills it; `leader()` is the index in `members` of the member that reports itself the
 * leader (asked over the HTTP gateway, waiting up to 10 s through an election); `stop()` kills
 * every member and removes the data.
 */
export async function startEtcdCluster(n = 3) {
  const { members, stop } = await startEtcdMembers(n)
  const leader = async () => {
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline) {
      const statuses = await Promise.all(members.map((m) => etcdHttp(m.endpoint, '/v3/maintenance/status', {})))
      let best = -1
      for (const [i, s] of statuses.entries()) {
        if (!s?.leader || s.leader === '0' || s.leader !== s.header?.member_id) continue
        if (best === -1 || Number(s.raftTerm) > Number(statuses[best].raftTerm)) best = i
      }
      if (best !== -1) return best
      await sleep(50)
    }
    throw new Error('no etcd member reported itself the leader within 10 s')
  }
  return { endpoints: members.map((m) => m.endpoint), members, leader, stop }
}
