/** One acquire call, from its options to a {@link LockHandle} (or `null`), traced when anyone listens. */
import { acquireChannel, type AcquireOutcome, type AcquireTrace } from './diagnostics'
import native from './native'
import { AbortError, LockClosedError, LockTimeoutError, toLockError } from './errors'
import { LockHandle } from './handle'
import { checkOptions, type AcquireOptions, type LockKind } from './options'
import { describe, type LockSource } from './settle'

/**
 * Acquires `name` as `kind` on `source`: a handle, or `null` when `tryOnly` and busy; rejects
 * with the matching `LockError`.
 */
export function acquire(
  source: LockSource,
  name: string,
  kind: LockKind,
  maxCount: number | undefined,
  options: unknown,
  tryOnly: boolean,
): Promise<LockHandle | null> {
  if (!acquireChannel.hasSubscribers) return acquireUntraced(source, name, kind, maxCount, options, tryOnly)
  const raw = (options ?? {}) as AcquireOptions
  const context: AcquireTrace = {
    name,
    backend: source.backend,
    kind,
    timeoutMs: typeof raw.timeoutMs === 'number' ? raw.timeoutMs : tryOnly ? 0 : undefined,
    tryOnly,
  }
  const started = performance.now()
  return acquireChannel.tracePromise(async () => {
    try {
      const handle = await acquireUntraced(source, name, kind, maxCount, options, tryOnly)
      context.outcome = handle ? 'granted' : 'busy'
      if (handle) context.fencingToken = handle.fencingToken
      return handle
    } catch (err) {
      context.outcome = outcomeOf(err)
      throw err
    } finally {
      context.waitMs = performance.now() - started
    }
  }, context)
}

function outcomeOf(err: unknown): AcquireOutcome {
  if (err instanceof LockTimeoutError) return 'timeout'
  if (err instanceof AbortError) return 'aborted'
  if (err instanceof LockClosedError) return 'closed'
  return 'error'
}

async function acquireUntraced(
  source: LockSource,
  name: string,
  kind: LockKind,
  maxCount: number | undefined,
  options: unknown,
  tryOnly: boolean,
): Promise<LockHandle | null> {
  const checked = checkOptions(options, kind === 'semaphore')
  const { timeoutMs = tryOnly ? 0 : undefined, signal, leaseMs, permits } = checked
  const autoRenew = checked.autoRenew ?? source.defaults?.autoRenew
  const maxHoldMs = checked.maxHoldMs ?? source.defaults?.maxHoldMs
  const what = describe(source, kind, name)
  if (signal?.aborted) throw new AbortError(`The wait for ${what} was aborted`, { cause: signal.reason })
  source.assertOpen()
  let onAbort: (() => void) | undefined
  let cancel: InstanceType<typeof native.CancelToken> | undefined
  if (signal) {
    const token = new native.CancelToken()
    cancel = token
    onAbort = () => token.cancel()
    signal.addEventListener('abort', onAbort, { once: true })
  }
  try {
    const started = performance.now()
    let left = timeoutMs
    for (;;) {
      const id = source.settler.id()
      let handle = source.native.acquire(id, name, kind, maxCount, permits, left, cancel, leaseMs, autoRenew)
      if (handle === undefined) handle = await source.settler.wait(id)
      if (handle && handle.lostReason != null) {
        // Granted, then lost before the grant reached this thread (its session ended, its
        // lease ran out while the answer waited): someone else may hold it already, so it is
        // not handed out. Try again with what is left of the budget.
        await new LockHandle(handle, name, kind, source, what).release().catch(() => {})
        if (left === undefined || left === Infinity) continue
        left = timeoutMs! - (performance.now() - started)
        if (left > 0 && timeoutMs !== 0) continue
        handle = null
      }
      if (handle) return new LockHandle(handle, name, kind, source, what, maxHoldMs, permits)
      if (tryOnly) return null
      throw new LockTimeoutError(`Timed out after ${timeoutMs} ms waiting for ${what}`)
    }
  } catch (err) {
    throw toLockError(err, signal)
  } finally {
    if (onAbort) signal?.removeEventListener('abort', onAbort)
  }
}
