// Where the programs the lab runs are, and installing the missing ones. Each tool has the
// variable that overrides where it is, the Debian package that has it and the Homebrew formula;
// each lookup names the package when it is missing.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

/** The path of `cmd` on PATH, or null. */
export function which(cmd) {
  const res = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' })
  return res.status === 0 ? res.stdout.trim() : null
}

/** The programs the suite runs itself, which `ensureTools()` can install. */
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

/** `name`'s path, or an error saying `why` it is needed and how to get it. */
function needTool(name, why) {
  const bin = findTool(name)
  if (bin) return bin
  const t = TOOLS[name]
  throw new Error(
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
  return needTool('redis-server', 'the Redis tests start their own servers')
}

let cliPath
/** redis-cli (PATH; it comes with Redis), or an error saying how to get it. */
export function redisCliBin() {
  cliPath ??= which('redis-cli')
  if (!cliPath) throw new Error('redis-cli was not found; it comes with Redis (Debian: apt-get install redis-tools)')
  return cliPath
}

/** The etcd binary ($DISTLOCK_ETCD_BIN, else PATH), or an error saying how to get it. */
export function etcdBin() {
  return needTool('etcd', 'the etcd tests start their own members')
}

/** The etcdctl binary ($DISTLOCK_ETCDCTL_BIN, else PATH), or an error saying how to get it. */
export function etcdctlBin() {
  return needTool('etcdctl', "the etcd interop tests run etcd's own client")
}

/** A PostgreSQL server tool (initdb, pg_ctl) from PATH or Debian's versioned directories (newest first), or null. */
export function pgBin(tool) {
  const onPath = which(tool)
  if (onPath) return onPath
  const base = '/usr/lib/postgresql'
  if (!existsSync(base)) return null
  const versions = readdirSync(base).toSorted((a, b) => a.localeCompare(b, undefined, { numeric: true }))
  for (const v of versions.toReversed()) {
    const p = join(base, v, 'bin', tool)
    if (existsSync(p)) return p
  }
  return null
}

/** mariadbd and its install script ($DISTLOCK_MYSQLD, else PATH, else /usr/sbin), or null. */
export function mysqlServerBins() {
  const server = findTool('mariadbd') || ['/usr/sbin/mysqld'].find((p) => existsSync(p)) || which('mysqld')
  const install = which('mariadb-install-db') || which('mysql_install_db')
  return server && install ? { server, install } : null
}
