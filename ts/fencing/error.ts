/**
 * The error a fenced write rejects with, and the checks of the arguments every guard shares.
 */
import { LockError, invalidArgType, invalidArgValue } from '../errors'
import { typeName } from '../options'

/** What {@link StaleFencingTokenError}'s constructor takes. */
export interface StaleFencingTokenErrorOptions {
  /** What was written: the SQL resource, the Redis key, the file's path. */
  resource: string
  /** The token the write carried. */
  token: bigint
  /** The largest token the storage had accepted for `resource`, larger than `token`. */
  current: bigint
  /** The error that caused this one, if any. */
  cause?: unknown
}

/**
 * A fenced write carried a token smaller than one the storage has already accepted for the
 * same resource: the writer's lock ended (a lease ran out while it was paused, its session
 * dropped) and a later holder has written since. Nothing of the write was kept. Its `code` is
 * `ERR_STALE_FENCING_TOKEN`; stop working on the resource and, if the work must still be done,
 * take the lock again.
 *
 * ```ts
 * import { StaleFencingTokenError } from 'distlock'
 * const err = new StaleFencingTokenError({ resource: 'invoice:42', token: 7n, current: 9n })
 * err.code // 'ERR_STALE_FENCING_TOKEN'
 * ```
 */
export class StaleFencingTokenError extends LockError {
  /** What was written: the SQL resource, the Redis key, the file's path. */
  readonly resource: string
  /** The token the rejected write carried. */
  readonly token: bigint
  /** The largest token the storage had accepted for the resource (larger than `token`). */
  readonly current: bigint

  constructor(options: StaleFencingTokenErrorOptions) {
    const { resource, token, current, cause } = options
    super(
      `Fencing token ${token} for "${resource}" is older than ${current}, the largest the storage has accepted: nothing was written`,
      'ERR_STALE_FENCING_TOKEN',
      cause === undefined ? undefined : { cause },
    )
    this.resource = resource
    this.token = token
    this.current = current
  }
}

/** The largest token a guard takes: PostgreSQL's `bigint` is signed 64-bit. */
const MAX_TOKEN = (1n << 63n) - 1n
/** The longest resource name in UTF-8 bytes: the MySQL fence table's key is `VARBINARY(1024)`. */
const MAX_RESOURCE_BYTES = 1024

/** `token`, checked: a `bigint` from 0 to 2^63 - 1 (a `handle.fencingToken`). */
export function checkToken(token: unknown, what = 'token'): bigint {
  if (typeof token !== 'bigint') {
    throw invalidArgType(
      `The "${what}" argument must be a bigint (a handle's fencingToken). Received ${typeName(token)}`,
    )
  }
  if (token < 0n || token > MAX_TOKEN) {
    throw invalidArgValue(`The "${what}" argument must be from 0 to 2^63 - 1. Received ${token}n`)
  }
  return token
}

/** `resource`, checked: a non-empty string of at most 1 024 UTF-8 bytes. */
export function checkResource(resource: unknown, what = 'resource'): string {
  if (typeof resource !== 'string') {
    throw invalidArgType(`The "${what}" argument must be of type string. Received ${typeName(resource)}`)
  }
  if (resource === '' || Buffer.byteLength(resource) > MAX_RESOURCE_BYTES) {
    throw invalidArgValue(`The "${what}" argument must be a non-empty string of at most 1024 bytes in UTF-8`)
  }
  return resource
}

/** A decimal token as the storage keeps it, back to a bigint; a clear error if it is not one. */
export function parseStored(text: unknown, where: string): bigint {
  const s = typeof text === 'number' || typeof text === 'bigint' ? String(text) : text
  if (typeof s !== 'string' || !/^\d{1,20}$/.test(s)) {
    throw new Error(`${where} holds ${JSON.stringify(String(text))}, not a fencing token`)
  }
  return BigInt(s)
}
