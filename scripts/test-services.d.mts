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
