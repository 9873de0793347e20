/** Types of test-services.mjs for the TypeScript specs. */
export interface Cluster {
  url: string
  port: number
  certFile: string | undefined
  stop(): void
}
export function startCluster(options?: { ssl?: boolean; password?: string }): Promise<Cluster | null>
export function findPostgres(): Promise<{ url: string; how: string }>
export function stopServices(): void
export interface RedisServer {
  url: string
  /** With `tls`: the private CA that signed the server's certificate. */
  caFile: string | undefined
  /** With `tls`: the server's certificate and key, which a client may present too. */
  certFile: string | undefined
  keyFile: string | undefined
  port: number
  pid: number
  /** SIGSTOP: the server keeps its sockets and stops answering. */
  pause(): void
  resume(): void
  stop(): void
}
export function redisServerBin(): string
export function startRedis(args?: string[], options?: { tls?: boolean }): Promise<RedisServer>
export function startRedisCluster(): Promise<{ url: string; nodes: RedisServer[]; stop(): void }>
export interface MysqlServer {
  /** mysql://root@127.0.0.1:<port>/test for a private server. */
  url: string
  /** The private CA that signed the server's certificate (CN and SAN "localhost"): connect to localhost to verify it. */
  caFile: string | undefined
  port: number
  /** A private server's unix socket (root logs in there with no password too). */
  socket: string | undefined
  /** A private server's mariadbd process. */
  pid: number | undefined
}
/** A private MariaDB server (mariadb-install-db + mariadbd, TLS offered), stopped by stop() or stopServices(). */
export function startMysql(): Promise<MysqlServer & { socket: string; pid: number; stop(): void }>
/** $DISTLOCK_TEST_MYSQL_URL (with $DISTLOCK_TEST_MYSQL_CA), else a private MariaDB server; throws saying what to install. */
export function findMysql(): Promise<MysqlServer & { how: string }>
export interface EtcdMember {
  name: string
  /** http://127.0.0.1:<client port> */
  endpoint: string
  pid: number
  /** Sends a signal while the member runs (default SIGKILL; SIGSTOP pauses it, SIGCONT resumes it). */
  kill(signal?: NodeJS.Signals): boolean
  /** Kills the member (resuming it first when paused). */
  stop(): void
}
export function etcdBin(): string
/** The etcdctl binary ($DISTLOCK_ETCDCTL_BIN, else PATH), or an error saying how to get it. */
export function etcdctlBin(): string
/** Installs the missing ones of these programs from Debian's packages when root, else throws the command to run. */
export function ensureTools(names: Array<'redis-server' | 'etcd' | 'etcdctl' | 'mariadbd'>): void
/** One private etcd member; stop() kills it and removes its data dir. */
export function startEtcd(): Promise<{
  endpoint: string
  pid: number
  kill(signal?: NodeJS.Signals): boolean
  stop(): void
}>
/** A private etcd cluster of `n` members (3 by default). */
export function startEtcdCluster(n?: number): Promise<{
  endpoints: string[]
  members: EtcdMember[]
  /** The index in `members` of the current leader, waiting up to 10 s through an election. */
  leader(): Promise<number>
  /** Kills every member and removes the data dirs. */
  stop(): void
}>
