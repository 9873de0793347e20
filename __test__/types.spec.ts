// Pins the public types of the providers and the keyed classes. `npm run typecheck` (tsc over
// __test__) fails if a signature changes; the runtime assertions check the same shapes exist.
import { describe, expect, expectTypeOf, it } from 'vitest'

import {
  FileDistributedLock,
  FileLockProvider,
  LockError,
  LockGuard,
  LockHandle,
  MemoryDistributedLock,
  MemoryLockProvider,
  PostgresDistributedLock,
  PostgresLockProvider,
  RedisDistributedLock,
  RedisLockProvider,
  type AbortSignalLike,
  type AcquireOptions,
  type Handle,
  type Lock,
  type ReaderWriterLock,
  type Semaphore,
  type DistributedLock,
  type DistributedReaderWriterLock,
  type DistributedSemaphore,
  type LockConfig,
  type LockErrorKind,
  type LockInfo,
  type LockProvider,
} from 'distlock'

describe('public types', () => {
  it('providers implement LockProvider', () => {
    expectTypeOf<FileLockProvider>().toExtend<LockProvider>()
    expectTypeOf<PostgresLockProvider>().toExtend<LockProvider>()
    expectTypeOf<RedisLockProvider>().toExtend<LockProvider>()
    expectTypeOf<MemoryLockProvider>().toExtend<LockProvider>()
    // The interface returns interfaces (so fakes type-check); the classes implement them.
    expectTypeOf<LockProvider['createLock']>().returns.toEqualTypeOf<Lock>()
    expectTypeOf<LockProvider['createReaderWriterLock']>().returns.toEqualTypeOf<ReaderWriterLock>()
    expectTypeOf<LockProvider['createSemaphore']>().parameters.toEqualTypeOf<[name: string, maxCount: number]>()
    expectTypeOf<LockProvider['createSemaphore']>().returns.toEqualTypeOf<Semaphore>()
    expectTypeOf<FileLockProvider['createLock']>().returns.toEqualTypeOf<DistributedLock>()
    expectTypeOf<DistributedLock>().toExtend<Lock>()
    expectTypeOf<DistributedReaderWriterLock>().toExtend<ReaderWriterLock>()
    expectTypeOf<DistributedSemaphore>().toExtend<Semaphore>()
    expectTypeOf<LockHandle>().toExtend<Handle>()
    expectTypeOf<LockProvider['close']>().returns.toEqualTypeOf<Promise<void>>()
    expect(new MemoryLockProvider()).toBeInstanceOf(MemoryLockProvider)
  })

  it('locks, handles and inspection', () => {
    expectTypeOf<DistributedLock['acquire']>().parameters.toEqualTypeOf<[options?: AcquireOptions]>()
    expectTypeOf<DistributedLock['acquire']>().returns.toEqualTypeOf<Promise<LockHandle>>()
    expectTypeOf<DistributedLock['tryAcquire']>().returns.toEqualTypeOf<Promise<LockHandle | null>>()
    expectTypeOf<DistributedLock['isLocked']>().returns.toEqualTypeOf<Promise<boolean>>()
    expectTypeOf<DistributedLock['getInfo']>().returns.toEqualTypeOf<Promise<LockInfo>>()
    expectTypeOf<DistributedSemaphore['getInfo']>().returns.toEqualTypeOf<Promise<LockInfo>>()
    expectTypeOf<LockInfo>().toEqualTypeOf<{
      held: boolean
      holders: number | null
      leaseRemainingMs: number | null
      fencingToken: bigint | null
    }>()
    expectTypeOf<AcquireOptions>().toEqualTypeOf<{
      timeoutMs?: number
      signal?: AbortSignalLike
      leaseMs?: number
      autoRenew?: boolean
      maxHoldMs?: number
    }>()
    expectTypeOf<AbortSignal>().toExtend<AbortSignalLike>()
    expectTypeOf<LockHandle['fencingToken']>().toEqualTypeOf<bigint>()
    expectTypeOf<LockHandle['signal']>().toEqualTypeOf<AbortSignal>()
    expectTypeOf<LockHandle['extend']>().parameters.toEqualTypeOf<[ms: number]>()
    expectTypeOf<LockHandle['release']>().returns.toEqualTypeOf<Promise<void>>()
    expectTypeOf<LockHandle>().toExtend<AsyncDisposable>()
  })

  it('keyed classes, guards and error kinds', () => {
    for (const K of [FileDistributedLock, PostgresDistributedLock, RedisDistributedLock, MemoryDistributedLock]) {
      expectTypeOf<InstanceType<typeof K>['acquire']>().returns.toEqualTypeOf<Promise<LockGuard>>()
      expectTypeOf<InstanceType<typeof K>['tryAcquire']>().returns.toEqualTypeOf<Promise<LockGuard | null>>()
      expectTypeOf<InstanceType<typeof K>['isLocked']>().parameters.toEqualTypeOf<[key: string]>()
      expectTypeOf<InstanceType<typeof K>['isLocked']>().returns.toEqualTypeOf<Promise<boolean>>()
      expectTypeOf<InstanceType<typeof K>['extend']>().parameters.toEqualTypeOf<[guard: LockGuard, ttlMs?: number]>()
      expect(typeof K.prototype.acquire).toBe('function')
    }
    expectTypeOf<ConstructorParameters<typeof RedisDistributedLock>[0]>().toHaveProperty('urls')
    expectTypeOf<ConstructorParameters<typeof RedisDistributedLock>[0]>().toHaveProperty('ttlMs')
    expectTypeOf<ConstructorParameters<typeof PostgresDistributedLock>[0]>().toHaveProperty('connectionString')
    expectTypeOf<LockConfig>().toEqualTypeOf<{ ttlMs?: number; retryIntervalMs?: number; maxRetries?: number }>()
    expectTypeOf<LockGuard['key']>().toEqualTypeOf<string>()
    expectTypeOf<LockGuard['token']>().toEqualTypeOf<string>()
    expectTypeOf<LockGuard['fencingToken']>().toEqualTypeOf<bigint>()
    expectTypeOf<LockGuard['signal']>().toEqualTypeOf<AbortSignal>()
    expectTypeOf<LockGuard['extend']>().parameters.toEqualTypeOf<[ttlMs: number]>()
    expectTypeOf<LockGuard>().toExtend<AsyncDisposable>()
    expectTypeOf<LockError['kind']>().toEqualTypeOf<LockErrorKind>()
    expectTypeOf<LockErrorKind>().toEqualTypeOf<'already_locked' | 'timeout' | 'backend_error'>()
    expect(new LockError('x', 'ERR_LOCK_BACKEND').kind).toBe('backend_error')
  })
})
