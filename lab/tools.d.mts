// Types of tools.mjs.
/** The path of `cmd` on PATH, or null. */
export function which(cmd: string): string | null
/** Installs the missing ones of these programs from Debian's packages when root, else throws the command to run. */
export function ensureTools(names: Array<'redis-server' | 'etcd' | 'etcdctl' | 'mariadbd'>): void
/** The redis-server binary ($DISTLOCK_REDIS_SERVER, else PATH), or an error saying how to get it. */
export function redisServerBin(): string
/** redis-cli (it comes with Redis), or an error saying how to get it. */
export function redisCliBin(): string
/** The etcd binary ($DISTLOCK_ETCD_BIN, else PATH), or an error saying how to get it. */
export function etcdBin(): string
/** The etcdctl binary ($DISTLOCK_ETCDCTL_BIN, else PATH), or an error saying how to get it. */
export function etcdctlBin(): string
/** initdb, pg_ctl… from PATH or Debian's versioned directories, or null. */
export function pgBin(tool: string): string | null
/** mariadbd and its install script, or null. */
export function mysqlServerBins(): { server: string; install: string } | null
