/**
 * The error classes distlock rejects with. Every error the native core produces arrives as an
 * `Error` with the core's stable `code` and its cause's facts as properties; {@link toLockError}
 * turns it into one of these.
 */
import { sep } from 'node:path'
import { getSystemErrorName } from 'node:util'

/**
 * The three outcomes callers of keyed lock APIs branch on: the key is held and no waiting was
 * allowed, waiting ran out, or the backend failed (everything else: lost, closed, aborted).
 */
export type LockErrorKind = 'already_locked' | 'timeout' | 'backend_error'

/**
 * What the error constructors take: `ErrorOptions`, declared here so the types need no
 * `lib` newer than ES2020.
 */
export interface LockErrorOptions {
  /** The error that caused this one. */
  cause?: unknown
  /** The coarse category; derived from the code when omitted. */
  kind?: LockErrorKind
}

/** Where distlock's compiled modules live: frames from here are not the caller's. */
const INTERNAL = `${__dirname}${sep}`

/**
 * Drops distlock's own frames from `err.stack`, so that it starts at the caller's frame (the
 * `await` of the call that failed), as Node's own errors start at the caller of its API.
 */
function trimInternalFrames(err: Error): void {
  const stack = err.stack
  if (typeof stack !== 'string') return
  const lines = stack.split('\n')
  const kept = lines.filter((line) => !(line.trimStart().startsWith('at ') && line.includes(INTERNAL)))
  if (kept.length !== lines.length) err.stack = kept.join('\n')
}

/** Base class of every lock error; `code` is stable and safe to branch on. */
export class LockError extends Error {
  /** Stable machine-readable code, e.g. `ERR_LOCK_TIMEOUT`. */
  readonly code: string
  /** The coarse category of {@link LockErrorKind}; `code` is the precise one. */
  readonly kind: LockErrorKind

  constructor(message: string, code: string, options?: LockErrorOptions) {
    super(message, options)
    this.name = new.target.name
    this.code = code
    this.kind = options?.kind ?? (code === 'ERR_LOCK_TIMEOUT' ? 'timeout' : 'backend_error')
    // After `name` is set: reading the stack formats its first line with the name.
    trimInternalFrames(this)
  }
}

/**
 * An `acquire` ran out of its `timeoutMs` because the lock stayed busy. `kind` is `'timeout'`,
 * or `'already_locked'` when no waiting was allowed (a keyed lock with no retry budget).
 */
export class LockTimeoutError extends LockError {
  constructor(message: string, options?: LockErrorOptions & { kind?: 'already_locked' | 'timeout' }) {
    super(message, 'ERR_LOCK_TIMEOUT', options)
  }
}

/** A held lock is no longer held; used as the `reason` of `handle.signal`. */
export class LockLostError extends LockError {
  constructor(message: string, options?: LockErrorOptions) {
    super(message, 'ERR_LOCK_LOST', options)
  }
}

/** What a {@link LockBackendError} knows about the failure behind it; every field may be absent. */
export interface BackendFacts {
  /**
   * The server that failed, as messages name it: `host:port` (PostgreSQL: `host:port/database`),
   * never with a password.
   */
  server?: string
  /** For an operating-system error: Node's `errno` (negative, as in `fs` and `net` errors). */
  errno?: number
  /** For an operating-system error: the system call (file backend: `open`, `stat`, `flock`…). */
  syscall?: string
  /** The file involved (file backend). */
  path?: string
  /** PostgreSQL's SQLSTATE of the server's error, e.g. `28P01` (a wrong password). */
  sqlState?: string
  /** The prefix of a Redis error reply, e.g. `WRONGPASS`, `NOAUTH`, `READONLY`. */
  redisError?: string
}

/**
 * The backend failed (unreachable, refused, I/O error). Never means "busy". Its `cause` is the
 * underlying error (with Node's `code`, `errno` and `syscall` for an OS error, the SQLSTATE or
 * the Redis error prefix as `code` for a server's), and the facts are fields of their own.
 */
export class LockBackendError extends LockError implements BackendFacts {
  // Declared only: a fact that is not known is not a property at all (not an own `undefined`).
  declare readonly server?: string
  declare readonly errno?: number
  declare readonly syscall?: string
  declare readonly path?: string
  declare readonly sqlState?: string
  declare readonly redisError?: string

  constructor(message: string, options?: LockErrorOptions & BackendFacts) {
    super(message, 'ERR_LOCK_BACKEND', options)
    const { server, errno, syscall, path, sqlState, redisError } = options ?? {}
    for (const [key, value] of Object.entries({ server, errno, syscall, path, sqlState, redisError })) {
      if (value !== undefined) Object.defineProperty(this, key, { value, enumerable: true })
    }
  }
}

/** The provider was closed before or while the operation ran. */
export class LockClosedError extends LockError {
  constructor(message: string, options?: LockErrorOptions) {
    super(message, 'ERR_LOCK_CLOSED', options)
  }
}

/**
 * A wait was cancelled through its `AbortSignal`; nothing is held. Like Node's own abort errors
 * its `name` is `AbortError` and its `code` is `ABORT_ERR`; `cause` is the signal's reason.
 */
export class AbortError extends LockError {
  constructor(message: string, options?: LockErrorOptions) {
    super(message, 'ABORT_ERR', options)
  }
}

/**
 * A call that does not fit the state of its object, such as `extend` on a released handle.
 * Its `code` is `ERR_INVALID_STATE`, as Node's own state errors.
 */
export class LockStateError extends LockError {
  constructor(message: string, options?: LockErrorOptions) {
    super(message, 'ERR_INVALID_STATE', options)
  }
}

/** The shape of the standard `SuppressedError` (ES2026), declared here so no `lib` is needed. */
export interface SuppressedErrorLike extends Error {
  /** The error that was thrown. */
  readonly error: unknown
  /** The error that was suppressed in its favour. */
  readonly suppressed: unknown
}

/** The constructor of {@link SuppressedError}. */
export interface SuppressedErrorConstructor {
  new (error: unknown, suppressed: unknown, message?: string): SuppressedErrorLike
  /** The prototype of the errors it creates. */
  readonly prototype: SuppressedErrorLike
}

class SuppressedErrorShim extends Error implements SuppressedErrorLike {
  readonly error: unknown
  readonly suppressed: unknown

  constructor(error: unknown, suppressed: unknown, message?: string) {
    super(message)
    this.name = 'SuppressedError'
    this.error = error
    this.suppressed = suppressed
  }
}

/**
 * What `withLock` rejects with when the callback threw and the release failed too: `error` is
 * the callback's own error, `suppressed` the release failure. The runtime's global
 * `SuppressedError` where it has one (Node 24), otherwise a class of the same shape and name.
 */
export const SuppressedError: SuppressedErrorConstructor =
  (globalThis as { SuppressedError?: SuppressedErrorConstructor }).SuppressedError ?? SuppressedErrorShim

/** A Node-style `TypeError` with `code` `ERR_INVALID_ARG_TYPE`. */
export function invalidArgType(message: string): TypeError {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' })
}

/** A Node-style `RangeError` with `code` `ERR_INVALID_ARG_VALUE`. */
export function invalidArgValue(message: string): RangeError {
  return Object.assign(new RangeError(message), { code: 'ERR_INVALID_ARG_VALUE' })
}

/** Edit distance, for "did you mean" (option names are short). */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const next = [i]
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    row = next
  }
  return row[b.length]!
}

/** The known key closest to `key`, if one is close enough to be a likely typo. */
function closest(key: string, known: readonly string[]): string | undefined {
  const lower = key.toLowerCase()
  let best: string | undefined
  let bestScore = Infinity
  for (const k of known) {
    const kl = k.toLowerCase()
    // A prefix (`timeout` for `timeoutMs`) or a small edit away (`timoutMs`, `directroy`).
    const score = kl.startsWith(lower) || lower.startsWith(kl) ? 0.5 : distance(lower, kl)
    if (score < bestScore) [best, bestScore] = [k, score]
  }
  return bestScore <= Math.max(2, Math.ceil(key.length / 3)) ? best : undefined
}

/**
 * Options of the JS lock libraries people come from, and the distlock option that does that job.
 * A user who passes redlock's `ttl` means `leaseMs`, not `tls`, however close the spelling.
 */
const FOREIGN_NAMES: Readonly<Record<string, string>> = {
  ttl: 'leaseMs', // redlock, etcd3
  duration: 'leaseMs', // redlock v5's `using(resources, duration)`
  lockTimeout: 'leaseMs', // redis-semaphore
  stale: 'leaseMs', // proper-lockfile
  acquireTimeout: 'timeoutMs', // redis-semaphore
  retryCount: 'timeoutMs', // redlock
  retryDelay: 'timeoutMs', // redlock
  retries: 'timeoutMs', // proper-lockfile
  timeout: 'timeoutMs', // async-mutex and many others
  refreshInterval: 'extendEveryMs', // redis-semaphore
  automaticExtensionThreshold: 'extendEveryMs', // redlock v5
}

/**
 * Throws `ERR_INVALID_ARG_VALUE` (a `TypeError`, as in Node) for the first own key of `options`
 * that is not in `known`, naming it and suggesting the closest known key. `where` is how the
 * message names the object, e.g. `"options"`.
 */
export function checkKeys(options: object, known: readonly string[], where = 'options'): void {
  for (const key of Object.keys(options)) {
    if (known.includes(key)) continue
    const foreign = FOREIGN_NAMES[key]
    const near = foreign !== undefined && known.includes(foreign) ? foreign : closest(key, known)
    const hint = near ? ` Did you mean "${near}"?` : ` Known properties: ${known.map((k) => `"${k}"`).join(', ')}.`
    throw Object.assign(new TypeError(`The "${where}" argument has an unknown property "${key}".${hint}`), {
      code: 'ERR_INVALID_ARG_VALUE',
    })
  }
}

/**
 * What a native call rejects (or throws) with: an `Error` whose `message` is the plain message,
 * with the core's stable `code` and, where known, the facts of its cause as own properties
 * (crates/node/src/errors.rs sets them).
 */
interface NativeError extends Error {
  code?: unknown
  server?: string
  errno?: number
  syscall?: string
  path?: string
  sqlstate?: string
  redis?: string
  /** The underlying error's own text. */
  causeMessage?: string
}

/** The cause fields a native error may carry. */
const FACTS = ['server', 'errno', 'syscall', 'path', 'sqlstate', 'redis', 'causeMessage'] as const

/** A {@link LockBackendError} whose `cause` is the underlying error, built from the native facts. */
function backendError(native: NativeError): LockBackendError {
  const text = native.message
  if (!FACTS.some((key) => native[key] !== undefined)) return new LockBackendError(text)
  // Node's convention: errno negative, code its name (ENOENT, ECONNREFUSED…).
  const errno = native.errno === undefined ? undefined : -Math.abs(native.errno)
  let code: string | undefined
  if (errno !== undefined) {
    try {
      code = getSystemErrorName(errno)
    } catch {
      code = undefined
    }
  }
  // Node's dns module names a name that does not resolve ENOTFOUND, whichever of the two
  // resolver numbers said so.
  if (native.syscall === 'getaddrinfo' && (code === 'EAI_NONAME' || code === 'EAI_NODATA')) code = 'ENOTFOUND'
  code ??= native.sqlstate ?? native.redis
  let cause: Error | undefined
  if (native.causeMessage !== undefined) {
    cause = new Error(native.causeMessage)
    Object.assign(cause, { code, errno, syscall: native.syscall, path: native.path })
    trimInternalFrames(cause)
    for (const k of ['code', 'errno', 'syscall', 'path'] as const) {
      if ((cause as unknown as Record<string, unknown>)[k] === undefined)
        delete (cause as unknown as Record<string, unknown>)[k]
    }
  }
  return new LockBackendError(text, {
    cause,
    server: native.server,
    errno,
    syscall: native.syscall,
    path: native.path,
    sqlState: native.sqlstate,
    redisError: native.redis,
  })
}

/**
 * Maps an error from the native core (an `Error` with the core's `code`, see
 * {@link NativeError}) to its public class. Errors that did not come from the core are
 * returned unchanged.
 */
export function toLockError(err: unknown, signal?: { readonly reason?: unknown }): unknown {
  if (!(err instanceof Error) || err instanceof LockError) return err
  const native = err as NativeError
  switch (native.code) {
    case 'TIMEOUT':
      return new LockTimeoutError(native.message)
    case 'CANCELLED':
      return new AbortError(native.message, { cause: signal?.reason })
    case 'LOST':
      return new LockLostError(native.message)
    case 'BACKEND':
    case 'IO':
      return backendError(native)
    case 'CLOSED':
      return new LockClosedError(native.message)
    case 'INVALID_ARGUMENT':
      return invalidArgValue(native.message)
    default:
      return err
  }
}
