// The checks of one run, from the grant records of every worker (see torture/worker.mjs).
//
// Overlap: two critical sections [tEnter, tExit] that intersect on the shared monotonic time
// line, where at least one is exclusive (mutex, write) — or, for a semaphore, more than maxCount
// permits taken at once (a grant holds `permits` of them, 1 unless it says). In mode 'strict' every overlap violates the promise. In mode 'allowed' (faults
// that make an overlap impossible to prevent) an overlap is allowed only when each earlier holder
// involved saw its synchronous isHeld check false at every step after the later grant (its
// lastHeldAt, the last step whose check was not false, is before the later grant) and the later
// fencing token is larger. "Later" is by grant time, not entry time: a holder granted first can
// enter last when its process stalls in between. `graceMs` widens "before the later grant" by that much, for faults
// where the server frees the lock before the holder's client can know (a session it ended).
//
// Fencing: exclusive grants' tokens strictly increase in grant order; and whenever a grant
// completed before another acquire started, its token is smaller (or, when the later one is a
// reader, not larger).

const EXCLUSIVE = new Set(['mutex', 'write'])

/** Whether the holders `set` (plus `b`) exceed what the primitive admits. */
function conflict(set, b, maxCount) {
  if (set.length === 0) return false
  if (b.kind === 'semaphore') return set.reduce((n, a) => n + (a.permits ?? 1), b.permits ?? 1) > maxCount
  return EXCLUSIVE.has(b.kind) || set.some((a) => EXCLUSIVE.has(a.kind))
}

/**
 * @param {object[]} grants grant records
 * @param {{ mode: 'strict'|'allowed', maxCount?: number, graceMs?: number }} opts
 */
export function analyze(grants, { mode, maxCount = 1, graceMs = 0 }) {
  const grace = graceMs * 1e6
  const out = {
    grants: grants.length,
    overlaps: 0,
    allowedOverlaps: 0,
    overlapViolations: 0,
    markerCollisions: 0,
    fencingViolations: 0,
    lostSignals: 0,
    examples: [],
  }
  const example = (text) => {
    if (out.examples.length < 5) out.examples.push(text)
  }
  for (const g of grants) {
    g.tok = BigInt(g.token)
    if (g.overlapDetected) out.markerCollisions++
    if (g.lostAt != null) out.lostSignals++
  }

  // Overlaps: a sweep over sections by entry time, keeping those still open.
  const byEnter = grants.toSorted((a, b) => a.tEnter - b.tEnter)
  let open = []
  for (const b of byEnter) {
    open = open.filter((a) => a.tExit > b.tEnter)
    if (conflict(open, b, maxCount)) {
      out.overlaps++
      // The later grant is the one granted last, which is not always the one that entered last: a
      // holder can be granted, stall (a paused process, a busy core) and enter after a later
      // grant entered. The others are the earlier holders; which of them still believed they
      // held the lock after the later grant.
      const all = [...open, b]
      const later = all.reduce((x, y) => (y.tGranted > x.tGranted ? y : x))
      const earlier = all.filter((a) => a !== later)
      const believers = earlier.filter((a) => a.lastHeldAt != null && a.lastHeldAt >= later.tGranted + grace)
      const tokensOk = EXCLUSIVE.has(later.kind) ? earlier.every((a) => later.tok > a.tok) : true
      const allowed = mode === 'allowed' && !conflict(believers, later, maxCount) && tokensOk
      if (allowed) out.allowedOverlaps++
      else {
        out.overlapViolations++
        const a = believers[0] ?? earlier[0]
        const isHeld = a.isHeldBeforeEachStep.includes('?') ? 'isHeld unavailable' : `isHeld ${a.isHeldBeforeEachStep}`
        example(
          `overlap: pid ${later.pid} ${later.kind} token ${later.token} was granted while ` +
            `pid ${a.pid} ${a.kind} token ${a.token} held (${((Math.min(a.tExit, later.tExit) - Math.max(a.tEnter, later.tEnter)) / 1e6).toFixed(2)} ms in both; ` +
            `the earlier's ${isHeld}, signal ${a.abortedBeforeEachStep}, ` +
            `last held ${a.lastHeldAt == null ? '-' : ((a.lastHeldAt - later.tGranted) / 1e6).toFixed(2) + ' ms after the later grant'}` +
            `${tokensOk ? '' : ', later token not larger'})`,
        )
      }
    }
    open.push(b)
  }

  // Fencing 1: exclusive grants in grant order.
  const exclusive = grants.filter((g) => EXCLUSIVE.has(g.kind)).toSorted((a, b) => a.tGranted - b.tGranted)
  for (let i = 1; i < exclusive.length; i++) {
    if (exclusive[i].tok <= exclusive[i - 1].tok) {
      out.fencingViolations++
      example(`fencing: exclusive token ${exclusive[i].token} granted after ${exclusive[i - 1].token}`)
    }
  }
  // Fencing 2: a grant completed before another acquire started has the smaller token. Readers
  // share the lock, so two readers are not ordered by it: a read is checked against the
  // exclusive grants before it, an exclusive grant against every grant.
  const byGrant = grants.toSorted((a, b) => a.tGranted - b.tGranted)
  const prefixMax = []
  const prefixMaxExclusive = []
  let max = -1n
  let maxExclusive = -1n
  for (const g of byGrant) {
    if (g.tok > max) max = g.tok
    if (EXCLUSIVE.has(g.kind) && g.tok > maxExclusive) maxExclusive = g.tok
    prefixMax.push(max)
    prefixMaxExclusive.push(maxExclusive)
  }
  for (const b of grants) {
    // The last grant completed before b's acquire started.
    let lo = 0
    let hi = byGrant.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (byGrant[mid].tGranted < b.tAcqStart) lo = mid + 1
      else hi = mid
    }
    if (lo === 0) continue
    const m = b.kind === 'read' ? prefixMaxExclusive[lo - 1] : prefixMax[lo - 1]
    const bad = b.kind === 'read' ? b.tok < m : b.tok <= m
    if (bad) {
      out.fencingViolations++
      example(`fencing: ${b.kind} token ${b.token} acquired after a grant of token ${m} had completed`)
    }
  }
  for (const g of grants) delete g.tok
  return out
}
