// Types of redis.mjs.
export interface RedisServer {
  url: string
  /** With `tls`: the private CA that signed the server's certificate. */
  caFile: string | undefined
  /** With `tls`: the server's certificate and key, which a client may present too. */
  certFile: string | undefined
  keyFile: string | undefined
  port: number
  /** The running process (a new one after restartEmpty). */
  readonly pid: number
  /** SIGSTOP: the server keeps its sockets and stops answering. */
  pause(): void
  resume(): void
  /** kill -9; resolves once the port refuses connections. The server stays down. */
  kill9(): Promise<void>
  /** kill -9 if running, then a fresh empty server on the same port with the same arguments. */
  restartEmpty(): Promise<void>
  /** `redis-cli -p <port> args…`: its output. */
  cli(...args: string[]): Promise<string>
  stop(): void
}
export function redisCli(port: number, ...args: string[]): Promise<string>
export function startRedis(args?: string[], options?: { tls?: boolean; port?: number }): Promise<RedisServer>
/** `n` independent servers for RedLock. */
export function startRedlock(n: number): Promise<{ servers: RedisServer[]; urls: string[] }>
export function startRedisCluster(): Promise<{ url: string; nodes: RedisServer[]; stop(): void }>
