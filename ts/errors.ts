/**
 * The error classes distlock rejects with. Every error the native core produces arrives as a
 * message starting with a stable `CODE: `; {@link toLockError} turns it into one of these.
 */

/**
 * The three outcomes callers of keyed lock APIs branch on: the key is held and no waiting was
 * allowed, waiting ran out, or the backend failed (everything else: lost, closed, aborted).
 */
export type LockErrorKind = 'already_locked' | 'timeout' | 'backend_error'

/** Base class of every lock error; `code` is stable and safe to branch on. */
export class LockError extends Error {
  /** Stable machine-readable code, e.g. `ERR_LOCK_TIMEOUT`. */
  readonly code: string
  /** The coarse category of {@link LockErrorKind}; `code` is the precise one. */
  readonly kind: LockErrorKind

  constructor(message: string, code: string, options?: ErrorOptions & { kind?: LockErrorKind }) {
    super(message, options)
    this.name = new.target.name
    this.code = code
    this.kind = options?.kind ?? (code === 'ERR_LOCK_TIMEOUT' ? 'timeout' : 'backend_error')
  }
}

/**
 * An `acquire` ran out of its `timeoutMs` because the lock stayed busy. `kind` is `'timeout'`,
 * or `'already_locked'` when no waiting was allowed (a keyed lock with no retry budget).
 */
export class LockTimeoutError extends LockError {
  constructor(message: string, options?: ErrorOptions & { kind?: 'already_locked' | 'timeout' }) {
    super(message, 'ERR_LOCK_TIMEOUT', options)
  }
}

/** A held lock is no longer held; used as the `reason` of `handle.signal`. */
export class LockLostError extends LockError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_LOCK_LOST', options)
  }
}

/** The backend failed (unreachable, refused, I/O error). Never means "busy". */
export class LockBackendError extends LockError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_LOCK_BACKEND', options)
  }
}

/** The provider was closed before or while the operation ran. */
export class LockClosedError extends LockError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_LOCK_CLOSED', options)
  }
}

/**
 * A wait was cancelled through its `AbortSignal`; nothing is held. Like Node's own abort errors
 * its `name` is `AbortError` and its `code` is `ABORT_ERR`; `cause` is the signal's reason.
 */
export class AbortError extends LockError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ABORT_ERR', options)
  }
}

/** A Node-style `TypeError` with `code` `ERR_INVALID_ARG_TYPE`. */
export function invalidArgType(message: string): TypeError {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' })
}

/** A Node-style `RangeError` with `code` `ERR_INVALID_ARG_VALUE`. */
export function invalidArgValue(message: string): RangeError {
  return Object.assign(new RangeError(message), { code: 'ERR_INVALID_ARG_VALUE' })
}

const NATIVE_CODE = /^([A-Z_]+): ([\s\S]*)$/

/**
 * Maps an error from the native core (message `CODE: text`) to its public class. Errors that
 * did not come from the core are returned unchanged.
 */
export function toLockError(err: unknown, signal?: AbortSignal): unknown {
  if (!(err instanceof Error) || err instanceof LockError) return err
  const match = NATIVE_CODE.exec(err.message)
  if (!match) return err
  const [, code, text] = match
  switch (code) {
    case 'TIMEOUT':
      return new LockTimeoutError(text)
    case 'CANCELLED':
      return new AbortError(text, { cause: signal?.reason })
    case 'LOST':
      return new LockLostError(text)
    case 'BACKEND':
    case 'IO':
      return new LockBackendError(text)
    case 'CLOSED':
      return new LockClosedError(text)
    case 'INVALID_ARGUMENT':
      return invalidArgValue(text)
    default:
      return err
  }
}
