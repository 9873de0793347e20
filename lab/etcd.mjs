// etcd for the lab: never a shared server; tests, torture rows and benchmarks start their own
// members (startEtcd, startEtcdCluster) on free loopback ports and stop them after.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { onCleanup } from './cleanup.mjs'
import { freePorts, sleep, waitFor } from './net.mjs'
import { spawnLogged, tail } from './process.mjs'
import { etcdBin } from './tools.mjs'

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
  onCleanup(stop)
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
