// Types of sentinel.mjs.
import type { RedisServer } from './redis.mjs'

export interface Sentinel {
  /** redis-sentinel://127.0.0.1:<port>/0?sentinelServiceName=<name> */
  url: string
  port: number
  cli(...args: string[]): Promise<string>
  stop(): void
}
/** A sentinel (quorum 1) watching 127.0.0.1:`masterPort` as `name` (mymaster by default). */
export function startSentinel(
  masterPort: number,
  options?: { name?: string; downAfterMs?: number; failoverTimeoutMs?: number },
): Promise<Sentinel>
/** A master, a replica and a sentinel that can fail over. */
export function startSentinelGroup(name?: string): Promise<{
  url: string
  master: RedisServer
  replica: RedisServer
  sentinelPort: number
  masterPort(): Promise<number>
  /** Promotes the replica; resolves once the sentinel names it and it is a writable master. */
  failover(): Promise<void>
}>
