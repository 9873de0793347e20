// `npm test`: the whole suite. Builds what is missing, runs the Rust tests, then vitest against
// the public package. Fails loudly, never skips: a missing toolchain or server is an error that
// says how to get it.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'

import {
  ensureTools,
  etcdBin,
  etcdctlBin,
  findMysql,
  findPostgres,
  redisServerBin,
  stopServices,
} from '../lab/index.mjs'

const root = new URL('..', import.meta.url).pathname

function run(label, cmd, args) {
  console.log(`\n== ${label}: ${cmd} ${args.join(' ')}`)
  const res = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' })
  if (res.error) {
    console.error(`distlock test: could not run ${cmd}: ${res.error.message}`)
    process.exit(1)
  }
  if (res.status !== 0) {
    console.error(`distlock test: ${label} failed (exit ${res.status})`)
    stopServices()
    process.exit(res.status ?? 1)
  }
}

const hasBinary = readdirSync(root).some((f) => /^distlock\..+\.node$/.test(f))
if (!hasBinary || !existsSync(`${root}dist/index.js`)) {
  console.log('distlock test: the addon or dist/ is missing; building (needs Rust: https://rustup.rs)')
  run('build', process.execPath, ['scripts/build.mjs'])
}
try {
  // The servers and clients the suite runs itself; a private MariaDB only without a given server.
  const mysqld = process.env.DISTLOCK_TEST_MYSQL_URL ? [] : ['mariadbd']
  ensureTools(['redis-server', 'etcd', 'etcdctl', ...mysqld])
  const pg = await findPostgres()
  process.env.DISTLOCK_TEST_PG_URL = pg.url
  console.log(`distlock test: PostgreSQL: ${pg.how} (${pg.url})`)
  process.env.DISTLOCK_REDIS_SERVER = redisServerBin()
  console.log(`distlock test: Redis: private redis-server processes from ${process.env.DISTLOCK_REDIS_SERVER}`)
  const mysql = await findMysql()
  process.env.DISTLOCK_TEST_MYSQL_URL = mysql.url
  if (mysql.caFile) process.env.DISTLOCK_TEST_MYSQL_CA = mysql.caFile
  console.log(`distlock test: MySQL: ${mysql.how} (${mysql.url})`)
  process.env.DISTLOCK_ETCD_BIN = etcdBin()
  process.env.DISTLOCK_ETCDCTL_BIN = etcdctlBin()
  console.log(
    `distlock test: etcd: private etcd processes from ${process.env.DISTLOCK_ETCD_BIN}, etcdctl ${process.env.DISTLOCK_ETCDCTL_BIN}`,
  )
} catch (err) {
  console.error(`distlock test: ${err.message}`)
  stopServices()
  process.exit(1)
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    stopServices()
    process.exit(130)
  })
}
run('rust tests', 'cargo', ['test', '--workspace', '--quiet'])
// Twice: on the event-loop driver (the default), and on the fallback every runtime without
// libuv uses (forced by DISTLOCK_DRIVER=tokio; the spec that checks `provider.driver` tells
// the two runs apart).
delete process.env.DISTLOCK_DRIVER
run('node tests (event-loop driver)', process.execPath, [
  'node_modules/vitest/vitest.mjs',
  'run',
  ...process.argv.slice(2),
])
process.env.DISTLOCK_DRIVER = 'tokio'
run('node tests (runtime driver: DISTLOCK_DRIVER=tokio)', process.execPath, [
  'node_modules/vitest/vitest.mjs',
  'run',
  ...process.argv.slice(2),
])
stopServices()
