// Compiled (never run) by module.spec.ts: the public types as a user sees them.
import {
  AbortError,
  FileLockProvider,
  LockError,
  LockTimeoutError,
  type AcquireOptions,
  type Handle,
  type Lock,
  type LockProvider,
  type MultiHandle,
  type ReaderWriterLock,
  type Semaphore,
} from 'distlock'

const provider: LockProvider = new FileLockProvider({ directory: '/tmp/x' })
const options: AcquireOptions = { timeoutMs: 5_000, signal: AbortSignal.timeout(1_000) }
export const lockFile: string = new FileLockProvider({ directory: '/tmp/x' }).lockFilePath('orders:42')

export async function usage(): Promise<bigint> {
  await using handle = await provider.createLock('orders:42').acquire(options)
  const token: bigint = handle.fencingToken
  const signal: AbortSignal = handle.signal
  const maybe: Handle | null = await provider.createLock('x').tryAcquire()
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

// A hand-written fake provider type-checks: the provider's methods return interfaces.
const fakeHandle: Handle = {
  name: 'fake',
  backend: 'fake',
  kind: 'mutex',
  permits: 1,
  signal: new AbortController().signal,
  fencingToken: 1n,
  isHeld: true,
  isReleased: false,
  assertHeld: () => {},
  leaseRemainingMs: null,
  extend: async () => {},
  release: async () => {},
  [Symbol.asyncDispose]: async () => {},
}
const info = { held: false, holders: 0, leaseRemainingMs: null, fencingToken: null }
const fakeLock: Lock = {
  name: 'fake',
  acquire: async () => fakeHandle,
  tryAcquire: async () => fakeHandle,
  withLock: async (fn) => fn(fakeHandle),
  isLocked: async () => false,
  getInfo: async () => info,
  waitForUnlock: async () => {},
}
const fakeRw: ReaderWriterLock = {
  name: 'fake',
  acquireRead: async () => fakeHandle,
  tryAcquireRead: async () => null,
  acquireWrite: async () => fakeHandle,
  tryAcquireWrite: async () => null,
  withReadLock: async (fn) => fn(fakeHandle),
  withWriteLock: async (fn) => fn(fakeHandle),
  isLocked: async () => false,
  getInfo: async () => info,
  waitForUnlock: async () => {},
}
const fakeSemaphore: Semaphore = { ...fakeLock, maxCount: 2 }
const fakeAll: MultiHandle = {
  handles: [fakeHandle],
  names: ['fake'],
  signal: fakeHandle.signal,
  isHeld: true,
  isReleased: false,
  assertHeld: () => {},
  extend: async () => {},
  release: async () => {},
  [Symbol.asyncDispose]: async () => {},
}
export const fakeProvider: LockProvider = {
  createLock: () => fakeLock,
  createReaderWriterLock: () => fakeRw,
  createSemaphore: () => fakeSemaphore,
  acquireAll: async () => fakeAll,
  tryAcquireAll: async () => null,
  close: async () => {},
  [Symbol.asyncDispose]: async () => {},
}
