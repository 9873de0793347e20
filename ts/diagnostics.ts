/**
 * What distlock publishes on `node:diagnostics_channel`. The channel names and the context
 * objects are public API: tracing and metrics tools subscribe to them. Nothing is built or
 * published while nobody subscribes.
 *
 * - `distlock:acquire`, `distlock:release`, `distlock:extend`: a `TracingChannel` each
 *   (`tracing:distlock:acquire:start`, `…:end`, `…:asyncStart`, `…:asyncEnd`, `…:error`), whose
 *   context is an {@link AcquireTrace}, {@link ReleaseTrace} or {@link ExtendTrace}. The
 *   outcome fields are set before `asyncEnd` (or `error`) is published.
 * - `distlock:lost`: a plain channel; a {@link LostMessage} for each lock found lost, for the
 *   handles created while it had a subscriber.
 * - `distlock:renewal-failure`, `distlock:disconnect`, `distlock:reconnect`: plain channels; a
 *   {@link RenewalFailureMessage} when a lease renewal got no answer (it is retried before the
 *   deadline; Redis), a {@link ConnectionMessage} when a server connection drops or comes
 *   back (Redis; on PostgreSQL, a session that held locks ended, and the next one opened).
 * - `distlock:stall`: a plain channel; a {@link StallMessage} when an acquire with no
 *   `timeoutMs` has been unable to reach its server for 5 s, and every 30 s while that lasts
 *   (an acquire with a timeout says so in its error instead).
 */
import * as dc from 'node:diagnostics_channel'

import type { LockKind } from './options'

/** How an acquire ended. */
export type AcquireOutcome = 'granted' | 'busy' | 'timeout' | 'aborted' | 'closed' | 'error'

/** The context of a `distlock:acquire` trace. */
export interface AcquireTrace {
  /** The lock's name. */
  name: string
  /** `file`, `postgres`, `redis` or `memory`. */
  backend: string
  /** `mutex`, `read`, `write` or `semaphore`. */
  kind: LockKind
  /** The call's wait budget in ms; `undefined` waits forever, `0` is one attempt. */
  timeoutMs: number | undefined
  /** Whether it was a `tryAcquire` (resolving to `null` when busy). */
  tryOnly: boolean
  /** How long the call took, in ms (the wait time, for a grant). Set when it ends. */
  waitMs?: number
  /** How it ended. Set when it ends. */
  outcome?: AcquireOutcome
  /** The grant's fencing token, when granted. */
  fencingToken?: bigint
  /** Set by `tracePromise` when the call resolves: the handle, or `null` when busy. */
  result?: unknown
  /** Set by `tracePromise` when the call rejects: the error. */
  error?: unknown
}

/** The context of a `distlock:release` trace. */
export interface ReleaseTrace {
  /** The lock's name. */
  name: string
  /** `file`, `postgres`, `redis` or `memory`. */
  backend: string
  /** `mutex`, `read`, `write` or `semaphore`. */
  kind: LockKind
  /** The fencing token of the grant being released. */
  fencingToken: bigint
  /** How long the lock was held until the release was called, in ms. */
  holdMs: number
  /** Whether it was lost before the release. */
  wasLost: boolean
  /** Set by `tracePromise` when the release rejects: the error. */
  error?: unknown
}

/** The context of a `distlock:extend` trace. */
export interface ExtendTrace {
  /** The lock's name. */
  name: string
  /** `file`, `postgres`, `redis` or `memory`. */
  backend: string
  /** `mutex`, `read`, `write` or `semaphore`. */
  kind: LockKind
  /** The fencing token of the grant being extended. */
  fencingToken: bigint
  /** The lease asked for, in ms. */
  ms: number
  /** Set by `tracePromise` when the extend rejects: the error. */
  error?: unknown
}

/** What `distlock:lost` publishes. */
export interface LostMessage {
  /** The lock's name. */
  name: string
  /** `file`, `postgres`, `redis` or `memory`. */
  backend: string
  /** `mutex`, `read`, `write` or `semaphore`. */
  kind: LockKind
  /** The fencing token of the grant that was lost. */
  fencingToken: bigint
  /** The backend's reason, e.g. that a renewal found the key gone. */
  reason: string
  /** How long the lock had been held when it was found lost, in ms. */
  heldMs: number
}

/** What `distlock:renewal-failure` publishes. */
export interface RenewalFailureMessage {
  /** The backend whose renewal failed (`redis`). */
  backend: string
  /** The lock's name. */
  name: string
  /** What happened and what comes next (when it is tried again, the time left). */
  detail: string
}

/** What `distlock:disconnect` and `distlock:reconnect` publish. */
export interface ConnectionMessage {
  /** `postgres` or `redis`. */
  backend: string
  /** The server, as messages name it (`host:port`, never with a password). */
  server: string
}

/** What `distlock:stall` publishes. */
export interface StallMessage {
  /** The backend (`postgres`, `mysql`, `redis`, `etcd`). */
  backend: string
  /** The lock, as messages name it (`redis lock "orders"`). */
  lock: string
  /** How long the acquire has been unable to reach its server, in ms. */
  waitedMs: number
  /** The failure it is riding out. */
  detail: string
}

/** The channel names, for subscribers. */
export const channels = {
  /** A `TracingChannel` around each acquire and tryAcquire; context {@link AcquireTrace}. */
  acquire: 'distlock:acquire',
  /** A `TracingChannel` around each release; context {@link ReleaseTrace}. */
  release: 'distlock:release',
  /** A `TracingChannel` around each `handle.extend()`; context {@link ExtendTrace}. */
  extend: 'distlock:extend',
  /** A plain channel: a {@link LostMessage} for each held lock found lost. */
  lost: 'distlock:lost',
  /** A plain channel: a {@link RenewalFailureMessage} when a lease renewal got no answer. */
  renewalFailure: 'distlock:renewal-failure',
  /** A plain channel: a {@link ConnectionMessage} when a server connection drops. */
  disconnect: 'distlock:disconnect',
  /** A plain channel: a {@link ConnectionMessage} when a server connection comes back. */
  reconnect: 'distlock:reconnect',
  /** A plain channel: a {@link StallMessage} while an acquire with no timeout cannot reach its server. */
  stall: 'distlock:stall',
} as const

/** @internal */
export const renewalFailureChannel = dc.channel(channels.renewalFailure)
/** @internal */
export const disconnectChannel = dc.channel(channels.disconnect)
/** @internal */
export const reconnectChannel = dc.channel(channels.reconnect)
/** @internal */
export const stallChannel = dc.channel(channels.stall)

/** @internal */
export const acquireChannel = dc.tracingChannel<object, AcquireTrace>(channels.acquire)
/** @internal */
export const releaseChannel = dc.tracingChannel<object, ReleaseTrace>(channels.release)
/** @internal */
export const extendChannel = dc.tracingChannel<object, ExtendTrace>(channels.extend)
/** @internal */
export const lostChannel = dc.channel(channels.lost)

/**
 * Publishes a backend event from the native side on its channel, if anyone listens.
 * @internal
 */
export function publishBackendEvent(
  backend: string,
  kind: string,
  name: string | null | undefined,
  server: string | null | undefined,
  detail: string | null | undefined,
  ms?: number | null,
): void {
  if (kind === 'stall') {
    if (stallChannel.hasSubscribers) {
      const m: StallMessage = { backend, lock: name ?? '', waitedMs: Math.round(ms ?? 0), detail: detail ?? '' }
      stallChannel.publish(m)
    }
    return
  }
  if (kind === 'renewal-failure') {
    if (renewalFailureChannel.hasSubscribers) {
      const m: RenewalFailureMessage = { backend, name: name ?? '', detail: detail ?? '' }
      renewalFailureChannel.publish(m)
    }
    return
  }
  const channel = kind === 'disconnect' ? disconnectChannel : kind === 'reconnect' ? reconnectChannel : undefined
  if (channel?.hasSubscribers) {
    const m: ConnectionMessage = { backend, server: server ?? '' }
    channel.publish(m)
  }
}
