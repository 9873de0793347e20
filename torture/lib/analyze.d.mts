/** One critical section as torture/worker.mjs records it (times in ns on the shared monotonic clock). */
export interface GrantRecord {
  pid: number
  kind: 'mutex' | 'write' | 'read' | 'semaphore'
  permits?: number
  token: string
  tAcqStart: number
  tGranted: number
  tEnter: number
  tExit: number
  isHeldBeforeEachStep: string
  abortedBeforeEachStep: string
  lastHeldAt: number | null
  lostAt: number | null
  overlapDetected?: string | null
  [k: string]: unknown
}

export interface Analysis {
  grants: number
  overlaps: number
  allowedOverlaps: number
  overlapViolations: number
  markerCollisions: number
  fencingViolations: number
  lostSignals: number
  examples: string[]
}

export function analyze(
  grants: GrantRecord[],
  opts: { mode: 'strict' | 'allowed'; maxCount?: number; graceMs?: number },
): Analysis
