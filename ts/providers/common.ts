/** What the providers' option checks share: the keys each may have, type checks, TLS material. */
import { checkKeys, invalidArgType } from '../errors'
import { typeName } from '../options'

/** The keys each provider's options may have. @internal */
const COMMON_KEYS = ['releaseOnExit', 'maxHoldMs'] as const

export const PROVIDER_KEYS = {
  file: ['directory', ...COMMON_KEYS],
  memory: [...COMMON_KEYS],
  postgres: [
    'connectionString',
    'maxConnections',
    'keepaliveMs',
    'opTimeoutMs',
    'connectTimeoutMs',
    'scope',
    'fencingSequence',
    ...COMMON_KEYS,
  ],
  redis: ['urls', 'leaseMs', 'extendEveryMs', 'keyPrefix', 'serverTimeoutMs', 'tls', 'autoRenew', ...COMMON_KEYS],
  mysql: [
    'connectionString',
    'maxConnections',
    'keepaliveMs',
    'opTimeoutMs',
    'connectTimeoutMs',
    'fencingTable',
    'fencing',
    'tls',
    ...COMMON_KEYS,
  ],
  etcd: [
    'endpoints',
    'leaseMs',
    'keyPrefix',
    'username',
    'password',
    'opTimeoutMs',
    'tls',
    'autoRenew',
    ...COMMON_KEYS,
  ],
} as const

/** Checks that `options` is an object with only `keys`. */
export function checkOptions(options: unknown, keys: readonly string[]): asserts options is object {
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, keys)
}

/** `value` (a string or a list of them) as a list; `key` names the option in errors. */
export function stringList(value: unknown, key: string): string[] {
  const list = typeof value === 'string' ? [value] : value
  if (!Array.isArray(list) || list.some((u) => typeof u !== 'string')) {
    throw invalidArgType(
      `The "options.${key}" property must be a string or an array of strings. Received ${typeName(value)}`,
    )
  }
  return [...list] as string[]
}

/** Checks that each of `values` is a number when given. */
export function checkNumbers(values: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(values)) {
    if (value !== undefined && typeof value !== 'number') {
      throw invalidArgType(`The "options.${key}" property must be of type number. Received ${typeName(value)}`)
    }
  }
}

/** Checks that each of `values` is a string when given. */
export function checkStrings(values: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(values)) {
    if (value !== undefined && typeof value !== 'string') {
      throw invalidArgType(`The "options.${key}" property must be of type string. Received ${typeName(value)}`)
    }
  }
}

/** PEM text or a Buffer holding it. */
export type Pem = string | Buffer

/** TLS options of {@link RedisLockProviderOptions}, shaped like `tls.connect`'s. */
export interface RedisTlsOptions {
  /**
   * The certificates to trust (PEM; several in one string, or a list). They replace the
   * system's roots, as `ca` does in Node's `tls.connect`. Default: the system's roots, or
   * `SSL_CERT_FILE`.
   */
  ca?: Pem | readonly Pem[] | undefined
  /** A client certificate chain (PEM), for servers that check clients (`tls-auth-clients`). */
  cert?: Pem | undefined
  /** The private key of `cert` (PEM, unencrypted). */
  key?: Pem | undefined
}

/** PEM text from a string or a Buffer; `key` names the option in errors. */
function pem(key: string, value: unknown): string | undefined {
  if (value === undefined) return undefined
  if (typeof value === 'string') return value
  if (Buffer.isBuffer(value)) return value.toString('utf8')
  throw invalidArgType(`The "options.tls.${key}" property must be a string or a Buffer. Received ${typeName(value)}`)
}

/** Checks the Redis TLS options and turns them into PEM text for the native side. */
export function tlsOptions(tls: unknown): { ca?: string[]; cert?: string; key?: string } | undefined {
  if (tls === undefined) return undefined
  if (tls === null || typeof tls !== 'object') {
    throw invalidArgType(`The "options.tls" property must be of type object. Received ${typeName(tls)}`)
  }
  checkKeys(tls, ['ca', 'cert', 'key'], 'options.tls')
  const { ca, cert, key } = tls as RedisTlsOptions
  const caList = ca === undefined ? undefined : (Array.isArray(ca) ? ca : [ca]).map((c) => pem('ca', c)!)
  return { ca: caList, cert: pem('cert', cert), key: pem('key', key) }
}
