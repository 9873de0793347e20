// OpenTelemetry for distlock: spans and metrics from distlock's diagnostics_channel events,
// through @opentelemetry/api only (your SDK setup decides where they go). Copy this file into
// your project, or import it, and call instrumentDistlock() once at startup:
//
//   import { instrumentDistlock } from './opentelemetry.mjs'
//   const stop = instrumentDistlock() // the global tracer and meter providers
//
// Spans: `distlock.acquire` (from the call to the grant or failure) and `distlock.release`, with
// the attributes below. Metrics:
//   distlock.lock.wait.duration   histogram (s): how long acquires took, by outcome
//   distlock.lock.hold.duration   histogram (s): from the grant to the release
//   distlock.lock.acquires        counter: acquires by outcome (busy and timeout are contention)
//   distlock.lock.lost            counter: locks found lost while held
//
//   node examples/opentelemetry.mjs   # a demo that prints the spans and metrics it recorded
import diagnostics_channel from 'node:diagnostics_channel'
import { SpanStatusCode, metrics, trace } from '@opentelemetry/api'

const SCOPE = 'distlock'

/** The attributes every span and data point of one lock carries. */
const lockAttributes = (c) => ({
  'distlock.lock.name': c.name,
  'distlock.backend': c.backend,
  'distlock.lock.kind': c.kind,
})

/**
 * Subscribes to distlock's channels and records spans and metrics with `tracer` and `meter`
 * (default: the global providers'). Returns a function that unsubscribes.
 */
export function instrumentDistlock({
  tracer = trace.getTracer(SCOPE),
  meter = metrics.getMeter(SCOPE),
  // Lock names can be unbounded in number: leave them out of metric attributes by default.
  nameInMetrics = false,
} = {}) {
  const metricAttributes = (c, extra) => {
    const a = { 'distlock.backend': c.backend, 'distlock.lock.kind': c.kind, ...extra }
    if (nameInMetrics) a['distlock.lock.name'] = c.name
    return a
  }
  const wait = meter.createHistogram('distlock.lock.wait.duration', {
    unit: 's',
    description: 'How long acquire and tryAcquire calls took, by outcome',
  })
  const hold = meter.createHistogram('distlock.lock.hold.duration', {
    unit: 's',
    description: 'How long locks were held, from the grant to the release',
  })
  const acquires = meter.createCounter('distlock.lock.acquires', {
    description: 'Acquire calls by outcome: granted, busy, timeout, aborted, closed, error',
  })
  const lost = meter.createCounter('distlock.lock.lost', { description: 'Locks found lost while held' })

  const spans = new WeakMap()
  const started = (op) => (c) => {
    spans.set(c, tracer.startSpan(`distlock.${op}`, { attributes: lockAttributes(c) }))
  }
  const acquire = {
    start: started('acquire'),
    error(c) {
      const span = spans.get(c)
      if (span && c.outcome === 'error') {
        span.recordException(c.error)
        span.setStatus({ code: SpanStatusCode.ERROR, message: c.error?.message })
      }
    },
    asyncEnd(c) {
      const span = spans.get(c)
      spans.delete(c)
      span?.setAttributes({
        'distlock.outcome': c.outcome,
        'distlock.wait_ms': c.waitMs,
        'distlock.try': c.tryOnly,
        ...(c.timeoutMs === undefined ? {} : { 'distlock.timeout_ms': c.timeoutMs }),
        ...(c.fencingToken === undefined ? {} : { 'distlock.fencing_token': c.fencingToken.toString() }),
      })
      span?.end()
      wait.record(c.waitMs / 1e3, metricAttributes(c, { 'distlock.outcome': c.outcome }))
      acquires.add(1, metricAttributes(c, { 'distlock.outcome': c.outcome }))
    },
  }
  const release = {
    start: started('release'),
    error(c) {
      const span = spans.get(c)
      span?.recordException(c.error)
      span?.setStatus({ code: SpanStatusCode.ERROR, message: c.error?.message })
    },
    asyncEnd(c) {
      const span = spans.get(c)
      spans.delete(c)
      span?.setAttributes({
        'distlock.fencing_token': c.fencingToken.toString(),
        'distlock.hold_ms': c.holdMs,
        'distlock.was_lost': c.wasLost,
      })
      span?.end()
      hold.record(c.holdMs / 1e3, metricAttributes(c))
    },
  }
  const onLost = (m) => {
    lost.add(1, metricAttributes(m))
    // A short span of its own, to find the loss by in a trace view.
    tracer
      .startSpan('distlock.lost', {
        attributes: {
          ...lockAttributes(m),
          'distlock.fencing_token': m.fencingToken.toString(),
          'distlock.lost.reason': m.reason,
          'distlock.hold_ms': m.heldMs,
        },
      })
      .end()
  }
  const acquireChannel = diagnostics_channel.tracingChannel('distlock:acquire')
  const releaseChannel = diagnostics_channel.tracingChannel('distlock:release')
  acquireChannel.subscribe(acquire)
  releaseChannel.subscribe(release)
  diagnostics_channel.subscribe('distlock:lost', onLost)
  return () => {
    acquireChannel.unsubscribe(acquire)
    releaseChannel.unsubscribe(release)
    diagnostics_channel.unsubscribe('distlock:lost', onLost)
  }
}

// The demo: an in-memory SDK setup, three callers contending on one lock.
if (import.meta.url === `file://${process.argv[1]}`) {
  const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } =
    await import('@opentelemetry/sdk-trace-base')
  const { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } =
    await import('@opentelemetry/sdk-metrics')
  const { makeProvider } = await import('./provider.mjs')

  const spanExporter = new InMemorySpanExporter()
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spanExporter)] })
  const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  const reader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 60_000 })
  const meterProvider = new MeterProvider({ readers: [reader] })
  const stop = instrumentDistlock({ tracer: tracerProvider.getTracer(SCOPE), meter: meterProvider.getMeter(SCOPE) })

  const provider = makeProvider()
  const lock = provider.createLock('example-otel')
  await Promise.all(
    [1, 2, 3].map(() => lock.withLock(() => new Promise((resolve) => setTimeout(resolve, 20)), { timeoutMs: 5_000 })),
  )
  const busy = await lock.acquire()
  await lock.tryAcquire() // busy: contention shows in distlock.lock.acquires{outcome=busy}
  await busy.release()
  await provider.close()
  stop()

  await reader.forceFlush()
  for (const span of spanExporter.getFinishedSpans()) {
    const a = span.attributes
    console.log(`span ${span.name} ${a['distlock.lock.name']} ${a['distlock.outcome'] ?? ''}`.trimEnd())
  }
  for (const { scopeMetrics } of metricExporter.getMetrics()) {
    for (const { metrics: list } of scopeMetrics) {
      for (const m of list) {
        for (const p of m.dataPoints) {
          const value = typeof p.value === 'number' ? p.value : `count=${p.value.count}`
          console.log(`metric ${m.descriptor.name} ${JSON.stringify(p.attributes)} ${value}`)
        }
      }
    }
  }
  await meterProvider.shutdown()
  await tracerProvider.shutdown()
}
