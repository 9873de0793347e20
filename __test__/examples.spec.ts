// The runnable examples under examples/ run as documented: on the file backend (the embedded
// default), and leader election also on Redis, where a leader stopped past its lease loses the lock.
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { ROOT, aborted, tempDir } from './helpers'

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
