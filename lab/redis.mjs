// Redis servers of the lab's own: never a shared server; every test, torture row and benchmark
// starts its own redis-server processes on free loopback ports and stops them after.
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { onCleanup } from './cleanup.mjs'
import { freePort, reachable, waitFor } from './net.mjs'
import { run, spawnLogged } from './process.mjs'
import { makeCertificates } from './tls.mjs'
import { redisCliBin, redisServerBin } from './tools.mjs'

/** `redis-cli -p <port> args…` without blocking the event loop; resolves to its output (throws when it fails). */
export async function redisCli(port, ...args) {
  const res = await run(redisCliBin(), ['-h', '127.0.0.1', '-p', String(port), ...args], 5_000)
  if (!res.ok) throw new Error(`redis-cli -p ${port} ${args.join(' ')} failed: ${res.stderr || res.err?.message}`)
  return res.stdout.trim()
}

/**
 * A redis-server of its own on a free loopback port (or `port`); extra `args` as on its command
 * line. With `tls`, it speaks only TLS, with a certificate for "localhost" from a fresh private CA
 * (`caFile`), and the URL is `rediss://localhost:<port>`. Its certificate and key (`certFile`,
 * `keyFile`, CN localhost, signed by that CA) also serve as a client identity for
 * `--tls-auth-clients yes`.
 *
 * Faults: pause (SIGSTOP) / resume (SIGCONT), kill9 (kill -9, stays down), restartEmpty (kill -9
 * if running, then a fresh empty server on the same port and arguments); `pid` follows a restart.
 */
export async function startRedis(args = [], { tls = false, port } = {}) {
  const bin = redisServerBin()
  port ??= await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'distlock-redis-'))
  let caFile
  let certFile
  let keyFile
  let listen = ['--port', String(port)]
  if (tls) {
    ;({ caFile, certFile, keyFile } = makeCertificates(dir))
    listen = ['--port', '0', '--tls-port', String(port), '--tls-cert-file', certFile, '--tls-key-file', keyFile]
    listen.push('--tls-ca-cert-file', caFile, '--tls-auth-clients', 'no')
  }
  const data = join(dir, 'data')
  const argv = [...listen, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', data, ...args]
  let proc
  let down = false
  const launch = async (what) => {
    rmSync(data, { recursive: true, force: true })
    mkdirSync(data)
    proc = spawnLogged(bin, argv, 'ignore')
    await waitFor(async () => proc.exited || (await reachable(port, 200)), `redis-server on port ${port} ${what}`)
    if (proc.exited) throw new Error(`redis-server (${bin}) exited at start on port ${port}`)
  }
  const stop = () => {
    proc?.stop()
    rmSync(dir, { recursive: true, force: true })
  }
  onCleanup(stop)
  await launch('starting')
  const server = {
    url: tls ? `rediss://localhost:${port}` : `redis://127.0.0.1:${port}`,
    caFile,
    certFile,
    keyFile,
    port,
    get pid() {
      return proc.child.pid
    },
    pause: () => process.kill(proc.child.pid, 'SIGSTOP'),
    resume: () => process.kill(proc.child.pid, 'SIGCONT'),
    async kill9() {
      if (down) return
      down = true
      proc.stop()
      await waitFor(async () => !(await reachable(port, 100)), `redis-server on port ${port} dying`, 5_000)
    },
    async restartEmpty() {
      await server.kill9()
      await launch('restarting')
      down = false
    },
    cli: (...a) => redisCli(port, ...a),
    stop,
  }
  return server
}

/** `n` independent servers for RedLock. */
export async function startRedlock(n) {
  const servers = []
  for (let i = 0; i < n; i++) servers.push(await startRedis())
  return { servers, urls: servers.map((s) => s.url) }
}

/** A Redis Cluster of three masters on loopback (needs redis-cli, which comes with Redis). */
export async function startRedisCluster() {
  const nodes = []
  for (let i = 0; i < 3; i++)
    nodes.push(await startRedis(['--cluster-enabled', 'yes', '--cluster-node-timeout', '5000']))
  const cli = redisCliBin()
  const res = spawnSync(
    cli,
    ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'],
    { encoding: 'utf8', timeout: 30_000 },
  )
  if (res.status !== 0) throw new Error(`redis-cli --cluster create failed: ${res.stdout}${res.stderr}`)
  for (const n of nodes) {
    await waitFor(
      async () => (await n.cli('cluster', 'info').catch(() => '')).includes('cluster_state:ok'),
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
