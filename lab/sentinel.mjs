// Redis Sentinel: a sentinel watching a master, and a group (master, replica, sentinel) that can
// fail over.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { onCleanup } from './cleanup.mjs'
import { freePort, reachable, waitFor } from './net.mjs'
import { spawnLogged } from './process.mjs'
import { redisCli, startRedis } from './redis.mjs'
import { redisServerBin } from './tools.mjs'

/**
 * A sentinel (`redis-server --sentinel`, quorum 1) on a free loopback port watching
 * 127.0.0.1:`masterPort` as `name`. `downAfterMs` and `failoverTimeoutMs` set the sentinel's
 * options of those names when given (Redis's defaults are 30 s and 3 min).
 */
export async function startSentinel(masterPort, { name = 'mymaster', downAfterMs, failoverTimeoutMs } = {}) {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'distlock-sentinel-'))
  const conf = join(dir, 'sentinel.conf')
  const lines = [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`]
  if (downAfterMs !== undefined) lines.push(`sentinel down-after-milliseconds ${name} ${downAfterMs}`)
  if (failoverTimeoutMs !== undefined) lines.push(`sentinel failover-timeout ${name} ${failoverTimeoutMs}`)
  writeFileSync(conf, [...lines, ''].join('\n'))
  const proc = spawnLogged(redisServerBin(), [conf, '--sentinel'], 'ignore')
  const stop = () => {
    proc.stop()
    rmSync(dir, { recursive: true, force: true })
  }
  onCleanup(stop)
  await waitFor(async () => proc.exited || (await reachable(port)), `redis sentinel on port ${port} starting`)
  if (proc.exited) throw new Error(`redis-server --sentinel exited at start on port ${port}`)
  return {
    url: `redis-sentinel://127.0.0.1:${port}/0?sentinelServiceName=${name}`,
    port,
    cli: (...a) => redisCli(port, ...a),
    stop,
  }
}

/**
 * A Sentinel group: a master, one replica and one sentinel (quorum 1) watching them as `name`,
 * quick to judge the master down (1 s). failover() promotes the replica (SENTINEL FAILOVER) and
 * waits until the sentinel names it and it answers as master.
 */
export async function startSentinelGroup(name = 'mymaster') {
  const master = await startRedis()
  // Writable, so a row can take keys away from it: a replica that never received a grant
  // (replication is asynchronous) and is promoted.
  const replica = await startRedis(['--replicaof', '127.0.0.1', String(master.port), '--replica-read-only', 'no'])
  await waitFor(
    async () => (await replica.cli('INFO', 'replication')).includes('master_link_status:up'),
    'the replica syncing with its master',
  )
  const sentinel = await startSentinel(master.port, { name, downAfterMs: 1000, failoverTimeoutMs: 5000 })
  // The sentinel learns of the replica from the master's INFO; failover needs it known and healthy.
  await waitFor(
    async () => {
      const out = await sentinel.cli('SENTINEL', 'replicas', name)
      return out.includes(String(replica.port)) && !/s_down|disconnected/.test(out)
    },
    'the sentinel discovering the replica',
    20_000,
  )
  const masterPort = async () =>
    Number((await sentinel.cli('SENTINEL', 'get-master-addr-by-name', name)).split('\n')[1])
  return {
    url: sentinel.url,
    master,
    replica,
    sentinelPort: sentinel.port,
    masterPort,
    /** Promotes the replica; resolves once the sentinel names it and it is a writable master. */
    async failover() {
      await sentinel.cli('SENTINEL', 'FAILOVER', name)
      await waitFor(
        async () =>
          (await masterPort()) === replica.port && (await replica.cli('INFO', 'replication')).includes('role:master'),
        'the sentinel promoting the replica',
        20_000,
      )
    },
  }
}
