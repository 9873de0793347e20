// The torture checker itself (torture/lib/analyze.mjs), on hand-made histories: it must flag the
// overlaps that break a promise and allow only those a fault makes impossible to prevent.
import { beforeAll, describe, expect, it } from 'vitest'

type Checker = typeof import('../torture/lib/analyze.mjs', { with: { 'resolution-mode': 'import' } })
type GrantRecord = Parameters<Checker['analyze']>[0][number]

let analyze: Checker['analyze']
beforeAll(async () => {
  ;({ analyze } = await import('../torture/lib/analyze.mjs'))
})

const MS = 1e6

/** A mutex section: granted at `g` ms, entered right after, left at `exit` ms. */
function section(pid: number, token: number, g: number, exit: number, extra: Partial<GrantRecord> = {}): GrantRecord {
  return {
    pid,
    kind: 'mutex',
    token: String(token),
    tAcqStart: (g - 1) * MS,
    tGranted: g * MS,
    tEnter: g * MS + 1000,
    tExit: exit * MS,
    isHeldBeforeEachStep: 'TTT',
    abortedBeforeEachStep: '000',
    lastHeldAt: exit * MS - 1000,
    lostAt: null,
    ...extra,
  }
}

/** A semaphore section of `permits` permits. */
const sem = (pid: number, token: number, g: number, exit: number, permits: number) =>
  section(pid, token, g, exit, { kind: 'semaphore', permits })

describe('torture checker', () => {
  it('passes sections that follow one another', () => {
    const r = analyze([section(1, 1, 0, 10), section(2, 2, 11, 20), section(1, 3, 21, 30)], { mode: 'strict' })
    expect(r).toMatchObject({ grants: 3, overlaps: 0, overlapViolations: 0, fencingViolations: 0 })
  })

  it('flags any overlap in strict mode', () => {
    const r = analyze([section(1, 1, 0, 10), section(2, 2, 5, 20)], { mode: 'strict' })
    expect(r).toMatchObject({ overlaps: 1, overlapViolations: 1 })
    expect(r.examples[0]).toContain('pid 2 mutex token 2 was granted while pid 1 mutex token 1 held')
  })

  it('allows an overlap after a fault only when the earlier holder saw isHeld false after the later grant', () => {
    const knew = section(1, 1, 0, 10, { isHeldBeforeEachStep: 'TFF', lastHeldAt: 4 * MS })
    expect(analyze([knew, section(2, 2, 5, 20)], { mode: 'allowed' })).toMatchObject({
      overlaps: 1,
      allowedOverlaps: 1,
      overlapViolations: 0,
    })
    const believed = section(1, 1, 0, 10, { lastHeldAt: 9 * MS })
    expect(analyze([believed, section(2, 2, 5, 20)], { mode: 'allowed' })).toMatchObject({ overlapViolations: 1 })
    // The grace covers a client that learns of the session's end a little after the server ended it.
    expect(analyze([believed, section(2, 2, 5, 20)], { mode: 'allowed', graceMs: 5 })).toMatchObject({
      allowedOverlaps: 1,
      overlapViolations: 0,
    })
  })

  it('takes the later grant by grant time, even when the earlier holder entered last', () => {
    // pid 1 is granted token 3 at 0 ms and stalls until 8 ms before it enters; its session ends and
    // pid 2 is granted token 4 at 2 ms and enters at once. The earlier holder is pid 1.
    const stalled = section(1, 3, 0, 12, { tEnter: 8 * MS, lastHeldAt: null, isHeldBeforeEachStep: 'FF' })
    const later = section(2, 4, 2, 10)
    const r = analyze([stalled, later], { mode: 'allowed' })
    expect(r).toMatchObject({ overlaps: 1, allowedOverlaps: 1, overlapViolations: 0, fencingViolations: 0 })
    // The same history where the stalled holder went on believing is a violation, named right.
    const believer = { ...stalled, lastHeldAt: 11 * MS, isHeldBeforeEachStep: 'TT' }
    const bad = analyze([believer, later], { mode: 'allowed' })
    expect(bad.overlapViolations).toBe(1)
    expect(bad.examples[0]).toContain('pid 2 mutex token 4 was granted while pid 1 mutex token 3 held')
  })

  it('flags an overlap whose later grant has the smaller token, and tokens that go backwards', () => {
    const r = analyze([section(1, 5, 0, 10, { lastHeldAt: 1 * MS }), section(2, 4, 5, 20)], { mode: 'allowed' })
    expect(r.overlapViolations).toBe(1)
    expect(r.examples[0]).toContain('later token not larger')
    expect(r.fencingViolations).toBeGreaterThan(0)
  })

  it('counts semaphore permits against maxCount', () => {
    expect(analyze([sem(1, 1, 0, 10, 2), sem(2, 2, 1, 10, 1)], { mode: 'strict', maxCount: 3 }).overlaps).toBe(0)
    expect(analyze([sem(1, 1, 0, 10, 2), sem(2, 2, 1, 10, 2)], { mode: 'strict', maxCount: 3 }).overlaps).toBe(1)
  })
})
