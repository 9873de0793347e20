// distlock from TypeScript: `await using` for providers and handles, options typed with the
// exported types, code written against the LockProvider interface (so any backend, or a fake in
// tests, can be passed in), and errors told apart by class. Node 20 does not run TypeScript:
// compile it first, e.g. with tsc.
//
//   npx tsc --module nodenext --target es2022 --lib es2023,esnext.disposable --rootDir examples \
//     --outDir out examples/typescript.mts && node out/typescript.mjs
import {
  AbortError,
  FileLockProvider,
  LockBackendError,
  LockLostError,
  LockTimeoutError,
  PostgresLockProvider,
  type AcquireOptions,
  type Handle,
  type LockProvider,
} from 'distlock'

/** Says which failure `err` is; anything else is rethrown. */
function classify(err: unknown): string {
  if (err instanceof LockTimeoutError) return `LockTimeoutError ${err.code} (kind ${err.kind})` // busy
  if (err instanceof AbortError) return `AbortError ${err.code}` // the caller cancelled
  if (err instanceof LockLostError) return `LockLostError ${err.code}` // held, then lost
  if (err instanceof LockBackendError) return `LockBackendError ${err.code}` // the backend failed; never "busy"
  // Bad arguments are Node-style TypeError / RangeError with a `code`.
  if (err instanceof TypeError || err instanceof RangeError) return `${err.name} ${(err as { code?: string }).code}`
  throw err
}

/** Work that needs the report lock, written against the interface, not a backend. */
async function rebuildReport(locks: LockProvider, id: number, options: AcquireOptions): Promise<bigint> {
  await using handle: Handle = await locks.createLock(`report:${id}`).acquire(options)
  // ... the work, checking handle.signal (it aborts if the lock is lost) ...
  handle.signal.throwIfAborted()
  return handle.fencingToken
} // released here, also when the work throws

const directory = process.env.DISTLOCK_EXAMPLE_DIR
await using locks = new FileLockProvider(directory ? { directory } : {})
const options = { timeoutMs: 5_000 } satisfies AcquireOptions

const token = await rebuildReport(locks, 7, options)
console.log(`report 7 rebuilt under fencing token ${token}`)

// Busy: someone holds report 8, and we wait at most 100 ms.
{
  await using held = await locks.createLock('report:8').acquire(options)
  try {
    await rebuildReport(locks, 8, { timeoutMs: 100 })
  } catch (err) {
    console.log(`busy: ${classify(err)}`)
  }

  // Cancelled: the wait is aborted through an AbortSignal; nothing stays held.
  const controller = new AbortController()
  setTimeout(() => controller.abort(new Error('shutting down')), 50)
  try {
    await rebuildReport(locks, 8, { signal: controller.signal })
  } catch (err) {
    console.log(`cancelled: ${classify(err)}`)
  }
  console.log(`report 8 still held by its holder: ${held.isHeld}`)
}

// Lost: a held lock's signal aborts with a LockLostError, here because its provider closed.
{
  const other = new FileLockProvider(directory ? { directory } : {})
  const handle = await other.createLock('report:9').acquire(options)
  await other.close()
  console.log(`lost: ${classify(handle.signal.reason)}`)
}

// The backend is unreachable (nothing listens on port 1): a LockBackendError, not a timeout.
{
  await using pg = new PostgresLockProvider({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres' })
  try {
    await rebuildReport(pg, 10, { timeoutMs: 1_000 })
  } catch (err) {
    console.log(`unreachable: ${classify(err)}`)
  }
}

// Bad input is rejected before anything is sent.
try {
  locks.createSemaphore('report-slots', 0)
} catch (err) {
  console.log(`invalid: ${classify(err)}`)
}
