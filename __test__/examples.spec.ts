// The runnable examples under examples/ run as documented: on the file backend (the embedded
// default), leader election, the reader-writer lock and the semaphore pool also on Redis, the
// PostgreSQL example on the test server, and the TypeScript example type-checked, then run.
import { execFile } from 'node:child_process'
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import ts from 'typescript'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { ROOT, aborted, tempDir, typecheck } from './helpers'

const run = promisify(execFile)
type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
let services: Services

/** Runs `examples/<name>.mjs` (or `file`) with Node, in a fresh lock directory; its stdout. */
async function example(
  name: string,
  env: Record<string, string> = {},
  file = join(ROOT, 'examples', `${name}.mjs`),
): Promise<string> {
  const { stdout } = await run(process.execPath, [file], {
    cwd: ROOT,
    timeout: 60_000,
    env: { ...process.env, DISTLOCK_EXAMPLE_DIR: tempDir(`example-${name}`), ...env },
  })
  return stdout
}

/** The reader-writer example's counts: readers overlapped, nobody was inside with the writer. */
function checkReaderWriter(out: string) {
  expect(out).toMatch(/^60 reads, 5 writes, config version 6$/m)
  expect(Number(/^most readers inside at once: (\d+)$/m.exec(out)?.[1])).toBeGreaterThan(1)
  expect(out).toMatch(/^reads that saw the writer inside: 0; writes that saw anyone else inside: 0$/m)
}

/** The semaphore pool's count of calls at once: more than one, at most the limit of 3. */
function checkPool(out: string) {
  const m = /^48 jobs by 4 workers; at most (\d+) calls at once \(limit 3\)$/m.exec(out)
  expect(m, out).not.toBeNull()
  expect(Number(m![1])).toBeGreaterThan(1)
  expect(Number(m![1])).toBeLessThanOrEqual(3)
}

beforeAll(async () => {
  services = await import('../lab/index.mjs')
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

  it('PostgreSQL: no lost increment across three processes; the row refuses a late write', async () => {
    const { url } = await services.findPostgres()
    const out = await example('postgres', { DISTLOCK_EXAMPLE_PG_URL: url })
    expect(out).toMatch(/^counter 60 after 60 increments by w1, w2, w3; writes refused by the fence: 0$/m)
    const late = /^late write with token (\d+) refused; the row keeps value -1 from token (\d+)$/m.exec(out)
    expect(late, out).not.toBeNull()
    expect(BigInt(late![2]!)).toBeGreaterThan(BigInt(late![1]!))
  })

  it('TypeScript: type-checks as a strict project would, runs, and tells the errors apart by class', async () => {
    const file = join(ROOT, 'examples', 'typescript.mts')
    const checked = typecheck([file], 'nodenext', 'nodenext')
    expect(checked.output).toBe('')
    expect(checked.status).toBe(0)
    // Node 20 runs no TypeScript: transpiled into a project whose node_modules/distlock is this package.
    const dir = tempDir('example-ts')
    mkdirSync(join(dir, 'node_modules'))
    symlinkSync(ROOT, join(dir, 'node_modules', 'distlock'), 'dir')
    const { outputText } = ts.transpileModule(readFileSync(file, 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    })
    writeFileSync(join(dir, 'typescript.mjs'), outputText)
    const out = await example('typescript', {}, join(dir, 'typescript.mjs'))
    expect(out).toMatch(/^report 7 rebuilt under fencing token \d+$/m)
    expect(out).toContain('busy: LockTimeoutError ERR_LOCK_TIMEOUT (kind timeout)')
    expect(out).toContain('cancelled: AbortError ABORT_ERR')
    expect(out).toContain('report 8 still held by its holder: true')
    expect(out).toContain('lost: LockLostError ERR_LOCK_LOST')
    expect(out).toContain('unreachable: LockBackendError ERR_LOCK_BACKEND')
    expect(out).toContain('invalid: RangeError ERR_INVALID_ARG_VALUE')
  })

  it('reader-writer lock: readers overlap, the writer is alone', async () => {
    checkReaderWriter(await example('reader-writer'))
  })

  it('reader-writer lock on Redis', async () => {
    const redis = await services.startRedis()
    checkReaderWriter(await example('reader-writer', { DISTLOCK_EXAMPLE_REDIS: redis.url }))
  })

  it('semaphore pool: at most 3 calls at once across four processes', async () => {
    checkPool(await example('semaphore-pool'))
  })

  it('semaphore pool on Redis', async () => {
    const redis = await services.startRedis()
    checkPool(await example('semaphore-pool', { DISTLOCK_EXAMPLE_REDIS: redis.url }))
  })
})

describe('OpenTelemetry (examples/opentelemetry.mjs)', () => {
  it('turns distlock’s channels into spans and metrics on Redis: wait, hold, contention, lost', async () => {
    const { instrumentDistlock } = await import('../examples/opentelemetry.mjs')
    const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } =
      await import('@opentelemetry/sdk-trace-base')
    const { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } =
      await import('@opentelemetry/sdk-metrics')
    const { RedisLockProvider } = await import('distlock')
    const { Redis } = await import('ioredis')

    const spans = new InMemorySpanExporter()
    const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] })
    const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
    const reader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 60_000 })
    const meterProvider = new MeterProvider({ readers: [reader] })
    const stop = instrumentDistlock({
      tracer: tracerProvider.getTracer('test'),
      meter: meterProvider.getMeter('test'),
    })
    const redis = await services.startRedis()
    try {
      await using locks = new RedisLockProvider({ urls: redis.url, leaseMs: 1_000 })
      const lock = locks.createLock('otel')
      const held = await lock.acquire()
      // Contention: a busy try, a wait that times out, and a wait that is granted at the release.
      expect(await lock.tryAcquire()).toBeNull()
      await expect(lock.acquire({ timeoutMs: 50 })).rejects.toThrow('Timed out')
      const waiting = lock.acquire({ timeoutMs: 5_000 })
      await new Promise((r) => setTimeout(r, 30))
      await held.release()
      const second = await waiting
      // Lost: the key disappears under the holder.
      const raw = new Redis(redis.url)
      await raw.flushall()
      raw.disconnect()
      await aborted(second.signal)
      await second.release()

      const finished = spans.getFinishedSpans()
      const acquires = finished.filter((s) => s.name === 'distlock.acquire')
      expect(acquires.map((s) => s.attributes['distlock.outcome'])).toEqual(['granted', 'busy', 'timeout', 'granted'])
      for (const s of acquires) {
        expect(s.attributes['distlock.lock.name']).toBe('otel')
        expect(s.attributes['distlock.backend']).toBe('redis')
        expect(s.attributes['distlock.lock.kind']).toBe('mutex')
      }
      expect(acquires[0]!.attributes['distlock.fencing_token']).toBe(held.fencingToken.toString())
      expect(acquires[3]!.attributes['distlock.wait_ms'] as number).toBeGreaterThanOrEqual(25)
      const releases = finished.filter((s) => s.name === 'distlock.release')
      expect(releases.map((s) => s.attributes['distlock.was_lost'])).toEqual([false, true])
      expect(releases[0]!.attributes['distlock.hold_ms'] as number).toBeGreaterThanOrEqual(50)
      const lostSpan = finished.find((s) => s.name === 'distlock.lost')
      expect(lostSpan?.attributes['distlock.fencing_token']).toBe(second.fencingToken.toString())

      await reader.forceFlush()
      const points = new Map<string, { attributes: Record<string, unknown>; value: unknown }[]>()
      for (const rm of metricExporter.getMetrics())
        for (const sm of rm.scopeMetrics)
          for (const m of sm.metrics) points.set(m.descriptor.name, m.dataPoints as never)
      const byOutcome = (name: string) =>
        Object.fromEntries(
          (points.get(name) ?? []).map((p) => [
            p.attributes['distlock.outcome'],
            typeof p.value === 'number' ? p.value : (p.value as { count: number }).count,
          ]),
        )
      expect(byOutcome('distlock.lock.acquires')).toEqual({ granted: 2, busy: 1, timeout: 1 })
      expect(byOutcome('distlock.lock.wait.duration')).toEqual({ granted: 2, busy: 1, timeout: 1 })
      expect((points.get('distlock.lock.hold.duration')![0]!.value as { count: number }).count).toBe(2)
      expect(points.get('distlock.lock.lost')![0]!.value).toBe(1)
      expect(points.get('distlock.lock.lost')![0]!.attributes).toEqual({
        'distlock.backend': 'redis',
        'distlock.lock.kind': 'mutex',
      })
    } finally {
      stop()
      redis.stop()
      await meterProvider.shutdown()
      await tracerProvider.shutdown()
    }
  })

  it('its demo runs on the file backend', async () => {
    const out = await example('opentelemetry')
    expect(out).toMatch(/^span distlock\.acquire example-otel busy$/m)
    expect(out).toMatch(/^metric distlock\.lock\.acquires .*"distlock\.outcome":"granted"\} 4$/m)
  })
})
