// Types of opentelemetry.mjs, for TypeScript projects that import it.
import type { Meter, Tracer } from '@opentelemetry/api'

export interface InstrumentOptions {
  /** Default: the global tracer provider's `distlock` tracer. */
  tracer?: Tracer
  /** Default: the global meter provider's `distlock` meter. */
  meter?: Meter
  /** Put lock names into metric attributes too (default false: names can be unbounded). */
  nameInMetrics?: boolean
}

/** Subscribes to distlock's diagnostics channels; returns a function that unsubscribes. */
export function instrumentDistlock(options?: InstrumentOptions): () => void
