// Compiled (never run) by module.spec.ts: the public types as a user sees them.
import {
  AbortError,
  FileLockProvider,
  LockError,
  LockTimeoutError,
  type AcquireOptions,
  type LockHandle,
  type LockProvider,
} from 'distlock'

const provider: LockProvider = new FileLockProvider({ directory: '/tmp/x' })
const options: AcquireOptions = { timeoutMs: 5_000, signal: AbortSignal.timeout(1_000) }

export async function usage(): Promise<bigint> {
  await using handle = await provider.createLock('orders:42').acquire(options)
  const token: bigint = handle.fencingToken
  const signal: AbortSignal = handle.signal
  const maybe: LockHandle | null = await provider.createLock('x').tryAcquire()
  const n: number = await provider.createSemaphore('s', 2).withLock(async (h) => (h.isReleased ? 1 : 2))
  await provider.createReaderWriterLock('rw').withReadLock(() => undefined)
  try {
    await provider.createLock('y').acquire({ timeoutMs: 1 })
  } catch (err) {
    if (err instanceof LockTimeoutError || err instanceof AbortError) {
      const code: string = err.code
      void code
    } else if (err instanceof LockError) {
      throw err
    }
  }
  void signal
  void maybe
  void n
  await provider.close()
  return token
}
