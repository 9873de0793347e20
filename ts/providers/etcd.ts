/** The etcd provider: keys on leases, ordered by create revision. */
import native, { type NativeProvider } from '../native'
import { BaseProvider, type CommonProviderOptions } from '../base-provider'
import { toLockError } from '../errors'
import {
  PROVIDER_KEYS,
  checkNumbers,
  checkOptions,
  checkStrings,
  stringList,
  tlsOptions,
  type RedisTlsOptions,
} from './common'

/** Options of {@link EtcdLockProvider}. */
export interface EtcdLockProviderOptions extends CommonProviderOptions {
  /**
   * The cluster's client endpoints (`http://host:2379`, `https://` for TLS); the client
   * balances over them and fails over when one goes down.
   */
  endpoints: string | readonly string[]
  /**
   * The TTL of the lease the locks hang on, in ms (etcd counts whole seconds, so it is rounded
   * up; 2 000 to 86 400 000; default 30 000). The lease is kept alive in the background.
   */
  leaseMs?: number | undefined
  /** Prepended to every key (default `'distlock/'`). */
  keyPrefix?: string | undefined
  /** A user name for etcd authentication (with `password`). */
  username?: string | undefined
  /** The password of `username`. */
  password?: string | undefined
  /** How long one request (a try, a release, `getInfo`) may take, in ms (default 5 000). */
  opTimeoutMs?: number | undefined
  /** TLS for `https://` endpoints, beyond the system's roots. */
  tls?: RedisTlsOptions | undefined
  /**
   * Whether the lease is kept alive in the background (default true). With `false` each lock
   * gets a lease of its own that ends `leaseMs` after the grant unless `handle.extend()` keeps it.
   */
  autoRenew?: boolean | undefined
}

/**
 * Locks on etcd v3: consensus-backed, FIFO by create revision, held by a lease kept alive in
 * the background. The fencing token is the lock key's create revision, which the whole
 * cluster agrees on: pass it to the storage you write, and have it reject smaller tokens.
 */
export class EtcdLockProvider extends BaseProvider {
  readonly #native: NativeProvider

  constructor(options: EtcdLockProviderOptions) {
    let nativeProvider
    try {
      nativeProvider = native.NativeProvider.etcd(etcdOptions(options))
    } catch (err) {
      throw toLockError(err)
    }
    super(nativeProvider, 'etcd', options)
    this.#native = nativeProvider
  }

  /** Locks held through this provider now. */
  get heldCount(): number {
    return this.#native.heldCount ?? 0
  }
}

function etcdOptions(options: EtcdLockProviderOptions) {
  checkOptions(options, PROVIDER_KEYS.etcd)
  const { endpoints, leaseMs, keyPrefix, username, password, opTimeoutMs, tls } = options
  const list = stringList(endpoints, 'endpoints')
  checkNumbers({ leaseMs, opTimeoutMs })
  checkStrings({ keyPrefix, username, password })
  return {
    endpoints: list,
    leaseMs,
    keyPrefix,
    username,
    password,
    opTimeoutMs,
    tls: tlsOptions(tls),
  }
}
