// Every error message the suite provokes, checked: each spec's calls publish their failures on
// distlock's diagnostics channels (an acquire's, release's or extend's `error`, a lost lock's
// reason, a failed renewal's or a stalled wait's detail), and after each spec file none of them
// may show Rust's Debug text or a doubled prefix. A message a user sees is words, not a dump.
import * as dc from 'node:diagnostics_channel'

import { afterAll, expect } from 'vitest'

/** What a message must not contain, and why. */
const BAD: Array<[RegExp, string]> = [
  [/\b(Custom|Os|Error|Kind|Some|None)\s?\{/, "Rust's Debug text of a struct"],
  [/\bkind: [A-Z][A-Za-z]+/, "Rust's Debug text of an io::Error"],
  [/\\"/, 'a quote escaped twice (a Debug string inside a message)'],
  [/\b(\w+) (lock|mutex|semaphore|reader-writer lock) "\1 \2/, 'the lock named twice'],
  [/\b(\w+) backend error: .*\b\1 backend error:/, 'the backend prefix twice'],
]

const seen: Array<{ where: string; text: string }> = []
const record = (where: string, text: unknown) => {
  if (typeof text === 'string' && text.length > 0) seen.push({ where, text })
}
const errorText = (e: unknown) =>
  e instanceof Error ? `${e.message}${e.cause instanceof Error ? ` (cause: ${e.cause.message})` : ''}` : undefined

const traced = {
  start() {},
  end() {},
  asyncStart() {},
  asyncEnd() {},
  error(c: { error?: unknown }) {
    record('a call', errorText(c.error))
  },
}
const plain: Array<[string, (m: unknown) => void]> = [
  ['distlock:lost', (m) => record('distlock:lost', (m as { reason?: string }).reason)],
  ['distlock:renewal-failure', (m) => record('distlock:renewal-failure', (m as { detail?: string }).detail)],
  ['distlock:stall', (m) => record('distlock:stall', (m as { detail?: string }).detail)],
]
const TRACED = ['distlock:acquire', 'distlock:release', 'distlock:extend']

function subscribe() {
  for (const name of TRACED) dc.tracingChannel(name).subscribe(traced as never)
  for (const [name, f] of plain) dc.subscribe(name, f)
}
function unsubscribe() {
  for (const name of TRACED) dc.tracingChannel(name).unsubscribe(traced as never)
  for (const [name, f] of plain) dc.unsubscribe(name, f)
}
subscribe()

/**
 * For a spec that checks what happens while nobody subscribes: `pause()` takes the checker's
 * subscriptions away, `resume()` puts them back.
 */
export const messageCheck = { pause: unsubscribe, resume: subscribe }

afterAll(() => {
  const bad = seen.flatMap(({ where, text }) =>
    BAD.filter(([re]) => re.test(text)).map(([, why]) => `${where}: ${why}: ${text.slice(0, 300)}`),
  )
  expect(bad, `${seen.length} messages checked`).toEqual([])
})
