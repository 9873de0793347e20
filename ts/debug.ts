/**
 * `NODE_DEBUG=distlock`: what the locks do, through `util.debuglog('distlock')` (stderr, one
 * line each, prefixed `DISTLOCK <pid>:`). The TS layer's events come from the diagnostics
 * channels; the Rust backends' `tracing` events are routed in at `DISTLOCK_LOG_LEVEL` (default
 * `debug`; `error`, `warn`, `info`, `debug` or `trace`). Without the switch nothing is
 * subscribed or installed.
 */
import * as dc from 'node:diagnostics_channel'
import { debuglog } from 'node:util'

import type {
  AcquireTrace,
  ConnectionMessage,
  ExtendTrace,
  LostMessage,
  ReleaseTrace,
  RenewalFailureMessage,
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
  dc.tracingChannel<object, AcquireTrace>('distlock:acquire').subscribe({
    asyncEnd(c: AcquireTrace) {
      const token = c.fencingToken === undefined ? '' : `, token ${c.fencingToken}`
      const how = c.tryOnly ? 'tryAcquire' : 'acquire'
      log('%s', `${how} ${lock(c)}: ${c.outcome} after ${ms(c.waitMs)}${token}`)
    },
  } as never)
  dc.tracingChannel<object, ReleaseTrace>('distlock:release').subscribe({
    asyncEnd(c: ReleaseTrace) {
      const failed = c.error === undefined ? '' : ` (failed: ${errorText(c.error)})`
      log('%s', `release ${lock(c)}, token ${c.fencingToken}, held ${ms(c.holdMs)}${failed}`)
    },
  } as never)
  dc.tracingChannel<object, ExtendTrace>('distlock:extend').subscribe({
    asyncEnd(c: ExtendTrace) {
      const failed = c.error === undefined ? '' : ` (failed: ${errorText(c.error)})`
      log('%s', `extend ${lock(c)} to ${c.ms} ms${failed}`)
    },
  } as never)
  dc.subscribe('distlock:renewal-failure', (m) => {
    const r = m as RenewalFailureMessage
    log('%s', `renewal of ${r.backend} lock ${JSON.stringify(r.name)} failed: ${r.detail}`)
  })
  for (const what of ['disconnect', 'reconnect'] as const) {
    dc.subscribe(`distlock:${what}`, (m) => {
      const c = m as ConnectionMessage
      log('%s', `${c.backend} ${what === 'disconnect' ? 'lost its connection to' : 'reconnected to'} ${c.server}`)
    })
  }
  dc.subscribe('distlock:lost', (m) => {
    const l = m as LostMessage
    log('%s', `lost ${lock(l)}, token ${l.fencingToken}, after ${ms(l.heldMs)}: ${l.reason}`)
  })
}
