/**
 * `NODE_DEBUG=distlock`: what the locks do, through `util.debuglog('distlock')` (stderr, one
 * line each, prefixed `DISTLOCK <pid>:`). The TS layer's events come from the diagnostics
 * channels; the Rust backends' `tracing` events are routed in at `DISTLOCK_LOG_LEVEL` (default
 * `debug`; `error`, `warn`, `info`, `debug` or `trace`). Without the switch nothing is
 * subscribed or installed.
 */
import { debuglog } from 'node:util'

import {
  acquireChannel,
  disconnectChannel,
  extendChannel,
  lostChannel,
  reconnectChannel,
  releaseChannel,
  renewalFailureChannel,
  stallChannel,
  type AcquireTrace,
  type ConnectionMessage,
  type ExtendTrace,
  type LostMessage,
  type ReleaseTrace,
  type RenewalFailureMessage,
  type StallMessage,
} from './diagnostics'
import native from './native'

const log = debuglog('distlock')

const ms = (n: number | undefined) => `${(n ?? 0).toFixed(1)} ms`
const lock = (c: { backend: string; kind: string; name: string }) => `${c.backend} ${c.kind} ${JSON.stringify(c.name)}`
const errorText = (e: unknown) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e))

if (log.enabled) {
  const level = process.env.DISTLOCK_LOG_LEVEL || 'debug'
  try {
    native.setLogger(level, (line: string) => log('%s', line))
  } catch (err) {
    log('%s', `cannot route the backends' events: ${errorText(err)}`)
  }
  // @types/node wants all five handlers; Node takes any of them.
  acquireChannel.subscribe({
    asyncEnd(c: AcquireTrace) {
      const token = c.fencingToken === undefined ? '' : `, token ${c.fencingToken}`
      const how = c.tryOnly ? 'tryAcquire' : 'acquire'
      log('%s', `${how} ${lock(c)}: ${c.outcome} after ${ms(c.waitMs)}${token}`)
    },
  } as never)
  releaseChannel.subscribe({
    asyncEnd(c: ReleaseTrace) {
      const failed = c.error === undefined ? '' : ` (failed: ${errorText(c.error)})`
      log('%s', `release ${lock(c)}, token ${c.fencingToken}, held ${ms(c.holdMs)}${failed}`)
    },
  } as never)
  extendChannel.subscribe({
    asyncEnd(c: ExtendTrace) {
      const failed = c.error === undefined ? '' : ` (failed: ${errorText(c.error)})`
      log('%s', `extend ${lock(c)} to ${c.ms} ms${failed}`)
    },
  } as never)
  renewalFailureChannel.subscribe((m) => {
    const r = m as RenewalFailureMessage
    log('%s', `renewal of ${r.backend} lock ${JSON.stringify(r.name)} failed: ${r.detail}`)
  })
  for (const [channel, what] of [
    [disconnectChannel, 'lost its connection to'],
    [reconnectChannel, 'reconnected to'],
  ] as const) {
    channel.subscribe((m) => {
      const c = m as ConnectionMessage
      log('%s', `${c.backend} ${what} ${c.server}`)
    })
  }
  stallChannel.subscribe((m) => {
    const s = m as StallMessage
    log(
      '%s',
      `acquire ${s.lock} has no timeout and has not reached its server for ${(s.waitedMs / 1000).toFixed(1)} s: ${s.detail}; still waiting`,
    )
  })
  lostChannel.subscribe((m) => {
    const l = m as LostMessage
    log('%s', `lost ${lock(l)}, token ${l.fencingToken}, after ${ms(l.heldMs)}: ${l.reason}`)
  })
}
