/**
 * What acquire and wait calls take, and how their arguments are checked: types and keys here,
 * values on the native side (so every binding gets the same errors).
 */
import native from './native'
import { checkKeys, invalidArgType, invalidArgValue, toLockError } from './errors'

/** What a handle holds: a mutex, a reader-writer lock's read or write side, or a semaphore permit. */
export type LockKind = 'mutex' | 'read' | 'write' | 'semaphore'

/** Options of every acquire call. */
export interface AcquireOptions {
  /**
   * How long to wait, in milliseconds. `undefined` (the default for `acquire`) waits forever;
   * `0` (the default for `tryAcquire`) makes one attempt.
   */
  timeoutMs?: number | undefined
  /**
   * Cancels the wait: the call rejects with {@link AbortError} and nothing stays held. Any
   * object shaped like an `AbortSignal` (`aborted`, `reason`, `addEventListener`,
   * `removeEventListener`) is accepted, as Node's own APIs accept them.
   */
  signal?: AbortSignalLike | undefined
  /**
   * The lease of this grant, in ms, instead of the provider's `leaseMs`, in the same range as
   * that option (Redis: 100 and up; etcd: 2 000 and up). Only backends whose locks expire (Redis,
   * etcd) use it; the others ignore it.
   */
  leaseMs?: number | undefined
  /**
   * Whether a lease is renewed in the background while held (default: the provider's
   * `autoRenew`, itself true). With `false` the lease ends `leaseMs` after the grant unless
   * `handle.extend()` moves it, and the handle's signal aborts then. Only backends whose locks
   * expire (Redis) have leases; the others ignore it.
   */
  autoRenew?: boolean | undefined
  /**
   * The longest this grant may be held, in ms (default: the provider's `maxHoldMs`, itself
   * none). Then the lock is released and the handle's signal aborts with a `LockLostError`,
   * on every backend: a cap for work that must not hold a lock forever.
   */
  maxHoldMs?: number | undefined
}

/** Options of a semaphore's acquire calls: those of every acquire, and how many permits. */
export interface SemaphoreAcquireOptions extends AcquireOptions {
  /**
   * How many of the semaphore's permits to take, all at once or none (default 1; a whole
   * number up to `maxCount`). Waiting stays first come, first served: a request for many
   * permits is not overtaken by later requests for fewer.
   */
  permits?: number | undefined
}

/** Options of `waitForUnlock`. */
export interface WaitOptions {
  /** How long to wait, in ms; default forever. */
  timeoutMs?: number | undefined
  /** Cancels the wait. */
  signal?: AbortSignalLike | undefined
}

/** Options of a semaphore's `waitForUnlock`. */
export interface SemaphoreWaitOptions extends WaitOptions {
  /** How many permits must be free at once (default 1, up to `maxCount`). */
  permits?: number | undefined
}

/** What `signal` options accept: an `AbortSignal`, or any object of the same shape. */
export interface AbortSignalLike {
  /** Whether the signal has aborted. */
  readonly aborted: boolean
  /** Why it aborted; becomes the `cause` of the {@link AbortError} a cancelled wait rejects with. */
  readonly reason?: unknown
  /** Registers `listener` for the `abort` event. */
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void
  /** Removes a listener added with `addEventListener`. */
  removeEventListener(type: 'abort', listener: () => void): void
}

/** Whether `value` can stand in for an `AbortSignal`. */
export function isAbortSignalLike(value: unknown): value is AbortSignalLike {
  if (value instanceof AbortSignal) return true
  if (value === null || typeof value !== 'object') return false
  const s = value as Record<string, unknown>
  return (
    typeof s.aborted === 'boolean' &&
    typeof s.addEventListener === 'function' &&
    typeof s.removeEventListener === 'function'
  )
}

/** Checks a `signal` option; `where` names it in errors. */
export function checkSignal(value: unknown, where: string): AbortSignalLike | undefined {
  if (value !== undefined && !isAbortSignalLike(value)) {
    throw invalidArgType(`The "${where}" property must be an instance of AbortSignal. Received ${typeName(value)}`)
  }
  return value
}

/** The keys an acquire's options may have. */
const ACQUIRE_KEYS = ['timeoutMs', 'signal', 'leaseMs', 'autoRenew', 'maxHoldMs'] as const
/** The keys a semaphore acquire's options may have. */
const SEMAPHORE_KEYS = [...ACQUIRE_KEYS, 'permits'] as const

/** The longest `maxHoldMs`: what a Node timer can wait. */
const MAX_HOLD_MS = 2 ** 31 - 1

/** Checks a `maxHoldMs` option; `where` names it in errors. */
export function checkMaxHold(value: unknown, where: string): number | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'number') {
    throw invalidArgType(`The "${where}" property must be of type number. Received ${typeName(value)}`)
  }
  if (!Number.isInteger(value) || value < 1 || value > MAX_HOLD_MS) {
    throw invalidArgValue(`The "${where}" property must be a whole number from 1 to ${MAX_HOLD_MS}. Received ${value}`)
  }
  return value
}

/** Checks an `autoRenew` option; `where` names it in errors. */
export function checkAutoRenew(value: unknown, where: string): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') {
    throw invalidArgType(`The "${where}" property must be of type boolean. Received ${typeName(value)}`)
  }
  return value as boolean | undefined
}

/** Validates `name` and returns it; throws `TypeError` / `RangeError` with Node's codes. */
export function checkName(name: unknown): string {
  if (typeof name !== 'string') {
    throw invalidArgType(`The "name" argument must be of type string. Received ${typeName(name)}`)
  }
  try {
    native.validateName(name)
  } catch (err) {
    throw toLockError(err)
  }
  return name
}

/** A short description of a value's type for argument errors, as Node words them. */
export function typeName(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an instance of Array'
  if (typeof value === 'object') return `an instance of ${value.constructor?.name ?? 'Object'}`
  if (typeof value === 'string') return `type string (${JSON.stringify(value)})`
  return `type ${typeof value} (${String(value)})`
}

/**
 * Checks an acquire's options (types and keys; the native side checks the values). A
 * semaphore's may also say how many `permits`.
 */
export function checkOptions(options: unknown, semaphore = false): SemaphoreAcquireOptions {
  if (options === undefined) return {}
  if (options === null || typeof options !== 'object') {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, semaphore ? SEMAPHORE_KEYS : ACQUIRE_KEYS)
  const { timeoutMs, signal, leaseMs, autoRenew, maxHoldMs, permits } = options as SemaphoreAcquireOptions
  checkAutoRenew(autoRenew, 'options.autoRenew')
  checkMaxHold(maxHoldMs, 'options.maxHoldMs')
  for (const [key, value] of [
    ['timeoutMs', timeoutMs],
    ['leaseMs', leaseMs],
    ['permits', permits],
  ] as const) {
    if (value !== undefined && typeof value !== 'number') {
      throw invalidArgType(`The "options.${key}" property must be of type number. Received ${typeName(value)}`)
    }
  }
  checkSignal(signal, 'options.signal')
  return { timeoutMs, signal, leaseMs, autoRenew, maxHoldMs, permits }
}
