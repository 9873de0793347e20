// The runnable examples under examples/ run as documented: on the file backend (the embedded
// default), and leader election also on Redis, where a leader stopped past its lease loses the lock.
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { ROOT, tempDir } from './helpers'

const run = promisify(execFile)
type Services = typeof import('../scripts/test-services.mjs', { with: { 'resolution-mode': 'import' } })
let services: Services

async function example(name: string, env: Record<string, string> = {}): Promise<string> {
  const { stdout } = await run(process.execPath, [join(ROOT, 'examples', `${name}.mjs`)], {
    cwd: ROOT,
    timeout: 60_000,
    env: { ...process.env, DISTLOCK_EXAMPLE_DIR: tempDir(`example-${name}`), ...env },
  })
  return stdout
}

beforeAll(async () => {
  services = await import('../scripts/test-services.mjs')
})
afterAll(() => services.stopServices())

describe('examples', () => {
  it('leader election: resign, crash, and a new leader each time', async () => {
    const out = await example('leader-election')
    const leaders = [...out.matchAll(/^\[(\w)\] LEADER (\w) token (\d+)$/gm)]
    expect(leaders.length).toBeGreaterThanOrEqual(3)
    expect(new Set(leaders.slice(0, 3).map((m) => m[2])).size).toBe(3)
    const tokens = leaders.map((m) => Number(m[3]))
    expect(tokens).toEqual(tokens.toSorted((a, b) => a - b))
    expect(out).toMatch(/^leaders in turn: \w, \w, \w$/m)
  })

  it('leader election on Redis', async () => {
    const redis = await services.startRedis()
    const out = await example('leader-election', { DISTLOCK_EXAMPLE_REDIS: redis.url })
    expect(out).toMatch(/^leaders in turn: \w, \w, \w, \w$/m)
    // The frozen leader woke up, saw handle.signal aborted, and stopped leading.
    const frozen = /^freezing (\w)/m.exec(out)![1]
    expect(out).toMatch(new RegExp(`^\\[${frozen}\\] LOST ${frozen}: .*was lost`, 'm'))
  })

  it('task queue: every task processed exactly once', async () => {
    expect(await example('task-queue')).toMatch(/^30 of 30 tasks processed, each once, by /m)
  })

  it('periodic job: runs never overlap', async () => {
    expect(await example('periodic-job')).toMatch(/^compaction ran \d+ times, skipped \d+ times, overlapping runs: 0$/m)
  })

  it('two locks in a consistent order: no deadlock, money conserved', async () => {
    expect(await example('two-locks')).toContain('200 transfers done, no deadlock; alice 900, bob 1100, total 2000')
  })

  it('fencing: the storage rejects the stale write', async () => {
    expect(await example('fencing')).toMatch(
      /late write rejected: token \d+ is older than \d+; the row still says "written by B"/,
    )
  })
})
