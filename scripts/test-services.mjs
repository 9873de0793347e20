// Finds the servers the tests need, or starts private ones, or fails saying how to get them.
// PostgreSQL: $DISTLOCK_TEST_PG_URL, else 127.0.0.1:5432 (user postgres), else a private cluster
// (initdb + pg_ctl on a free loopback port in a temp dir, stopped by stopServices()).
// Redis: never a shared server; every test starts its own redis-server processes on free
// loopback ports (startRedis, startRedisCluster) and stops them after.
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
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

/** The redis-server binary ($DISTLOCK_REDIS_SERVER, else PATH), or an error saying how to get it. */
export function redisServerBin() {
  const bin = process.env.DISTLOCK_REDIS_SERVER || which('redis-server')
  if (!bin) {
    throw new Error(
      'redis-server was not found. The Redis tests start their own servers: install Redis ' +
        '(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set DISTLOCK_REDIS_SERVER to its path',
    )
  }
  return bin
}

let exitHook = false

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
  if (!exitHook) {
    // Also when a test worker ends without its afterAll: no redis-server outlives the run.
    exitHook = true
    process.once('exit', stopServices)
  }
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
