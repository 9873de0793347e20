/** The Redis provider: one server, a Cluster, a Sentinel group, or RedLock over several. */
import native, { type NativeProvider } from '../native'
import { BaseProvider, type CommonProviderOptions } from '../base-provider'
import type { DistributedSemaphore } from '../locks'
import { invalidArgValue, toLockError } from '../errors'
import type { AcquireAllStrategy } from '../multi'
import {
  PROVIDER_KEYS,
  checkNumbers,
  checkOptions,
  checkStrings,
  stringList,
  tlsOptions,
  type RedisTlsOptions,
} from './common'

/** Options of {@link RedisLockProvider}. */
export interface RedisLockProviderOptions extends CommonProviderOptions {
  /**
   * The servers, as URLs. One URL is one deployment: a server (`redis://[user:password@]host:port/db`,
   * `rediss://` for TLS), a cluster (`redis-cluster://host:port?node=host2:port2&node=…`) or a
   * Sentinel group (`redis-sentinel://host:26379/0?sentinelServiceName=mymaster&node=…`).
   * Several URLs are independent servers for RedLock: a lock needs a majority of them.
   */
  urls: string | readonly string[]
  /** How long a lock lives on the server unless renewed, in ms (≥ 100; default 30 000). */
  leaseMs?: number | undefined
  /** How often held leases are renewed, in ms (default a third of `leaseMs`). */
  extendEveryMs?: number | undefined
  /** Prepended to every key (default `''`, which keeps keys identical to the `redlock` package's). */
  keyPrefix?: string | undefined
  /**
   * How long one server may take to answer one command, in ms (default 1 000), connect
   * included. It bounds a try (`timeoutMs: 0`), `release`, `extend` and, per server,
   * `getInfo`. An acquire with `timeoutMs: T` settles by T whatever the network does; a
   * failure that may pass (a reset, a stalled or restarting server) is retried until then.
   */
  serverTimeoutMs?: number | undefined
  /** TLS for the `rediss://` servers, beyond the system's roots. */
  tls?: RedisTlsOptions | undefined
  /**
   * Whether held leases are renewed in the background (default true). With `false` a lock
   * ends `leaseMs` after its grant unless `handle.extend()` moves it; an acquire's
   * `autoRenew` overrides this.
   */
  autoRenew?: boolean | undefined
}

/**
 * Locks on Redis: leases renewed in the background, waiters woken by the release (pub/sub) in
 * arrival order, fencing tokens from a per-name counter, and a mutex layout compatible with the
 * `redlock` npm package.
 */
export class RedisLockProvider extends BaseProvider {
  readonly #native: NativeProvider
  readonly #redlock: boolean

  constructor(options: RedisLockProviderOptions) {
    let nativeProvider
    let checked
    try {
      checked = redisOptions(options)
      nativeProvider = native.NativeProvider.redis(checked)
    } catch (err) {
      throw toLockError(err)
    }
    super(nativeProvider, 'redis', options)
    this.#native = nativeProvider
    this.#redlock = checked.urls.length > 1
  }

  /**
   * A semaphore on one Redis deployment. Throws a `RangeError` on RedLock (several URLs): a count
   * cannot be bounded by quorums of independent servers.
   */
  override createSemaphore(name: string, maxCount: number): DistributedSemaphore {
    if (this.#redlock) {
      throw invalidArgValue(
        `RedisLockProvider has no semaphore on RedLock (asked for ${JSON.stringify(name)}): its urls are independent servers, and a count cannot be bounded by RedLock quorums; use one Redis deployment (a server, a cluster or a Sentinel group)`,
      )
    }
    return super.createSemaphore(name, maxCount)
  }

  /**
   * RedLock takes `acquireAll`'s locks together: every lock's attempt goes out in the same round
   * (one round trip per server), and the round is kept only if every lock won its quorum.
   * @internal
   */
  protected override get acquireAllStrategy(): AcquireAllStrategy {
    return this.#redlock ? 'together' : 'ordered'
  }

  /** Locks held through this provider now. */
  get heldCount(): number {
    return this.#native.heldCount ?? 0
  }

  /**
   * Scripts sent so far on the connections this provider keeps on the JS thread's event loop
   * (one plain TCP server or RedLock servers; 0 with the `'runtime'` driver, TLS, Cluster or
   * Sentinel, whose calls go through the background client).
   */
  get eventLoopScripts(): number {
    return this.#native.eventLoopScripts ?? 0
  }

  /** Lease renewals sent so far, and the scripts (round trips per server) that carried them. */
  get renewalStats(): {
    /** Lease renewals sent. */
    renewals: number
    /** Scripts that carried them (one round trip per server each). */
    scripts: number
  } {
    const [renewals = 0, scripts = 0] = this.#native.renewalStats ?? []
    return { renewals, scripts }
  }

  /**
   * Deletes the fencing counters (`…:distlock:fence`, one per name ever locked, never expiring)
   * of this provider's names (under its `keyPrefix`) that nobody holds, reads, waits on or is
   * acquiring right now, on every server (every primary of a cluster), and resolves to how
   * many. Safe while other clients use the names: each counter is checked and deleted in one
   * script. Tokens still never go backwards: a deleted counter starts again at the server's
   * clock in microseconds, above every token it handed out. Run it from time to time (a daily
   * job), not in a tight loop: it `SCAN`s the whole keyspace.
   */
  async removeUnusedFenceKeys(): Promise<number> {
    try {
      return await this.#native.removeUnused()
    } catch (err) {
      throw toLockError(err)
    }
  }
}

function redisOptions(options: RedisLockProviderOptions) {
  checkOptions(options, PROVIDER_KEYS.redis)
  const { urls, leaseMs, extendEveryMs, keyPrefix, serverTimeoutMs, tls } = options
  const list = stringList(urls, 'urls')
  checkNumbers({ leaseMs, extendEveryMs, serverTimeoutMs })
  checkStrings({ keyPrefix })
  return { urls: list, leaseMs, extendEveryMs, keyPrefix, serverTimeoutMs, tls: tlsOptions(tls) }
}
