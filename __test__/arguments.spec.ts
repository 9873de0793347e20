// What a call refuses before it does anything: option keys that are not distlock's (with the
// likely key named), signals shaped like AbortSignal from another realm or library, and names
// over the 1024-byte limit. Through the public package; no server needed.
import { describe, expect, it } from 'vitest'
import {
  AbortError,
  FileDistributedLock,
  FileLockProvider,
  MemoryDistributedLock,
  MemoryLockProvider,
  PostgresDistributedLock,
  PostgresLockProvider,
  RedisDistributedLock,
  RedisLockProvider,
} from 'distlock'

import { tempDir, thrown } from './helpers'

describe('unknown option keys', () => {
  it('an acquire with a mistyped option rejects at once, naming it and the likely key', async () => {
    await using locks = new MemoryLockProvider()
    const held = await locks.createLock('typo').acquire()
    const started = performance.now()
    // `timeout` instead of `timeoutMs` used to wait forever on a held lock.
    const err = await thrown(() => locks.createLock('typo').acquire({ timeout: 100 } as never))
    expect(performance.now() - started).toBeLessThan(1_000)
    expect(err).toBeInstanceOf(TypeError)
    expect(err.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(err.message).toBe('The "options" argument has an unknown property "timeout". Did you mean "timeoutMs"?')
    for (const call of [
      () => locks.createLock('typo').tryAcquire({ timoutMs: 0 } as never),
      () => locks.createReaderWriterLock('typo').acquireRead({ TimeoutMs: 5 } as never),
      () => locks.createSemaphore('typo', 2).withLock(() => 1, { leasems: 200 } as never),
      () => locks.createLock('typo').acquire({ retryCount: 3 } as never),
    ]) {
      const e = await thrown(call)
      expect(e.code).toBe('ERR_INVALID_ARG_VALUE')
      expect(e.message).toMatch(/unknown property "\w+"\. Did you mean "(timeoutMs|leaseMs)"\?$/)
    }
    // Far from every known key: the message lists them instead.
    const far = await thrown(() => locks.createLock('typo').acquire({ priority: 1 } as never))
    expect(far.message).toBe(
      'The "options" argument has an unknown property "priority". Known properties: "timeoutMs", "signal", "leaseMs", "autoRenew", "maxHoldMs".',
    )
    await held.release()
    // Nothing was left waiting or held.
    expect(await locks.createLock('typo').isLocked()).toBe(false)
  })

  it('providers and keyed classes reject unknown keys instead of ignoring them', () => {
    const cases: [() => unknown, string, string | undefined][] = [
      // `dir` used to lock silently in the default directory.
      [() => new FileLockProvider({ dir: tempDir('typo') } as never), 'dir', 'directory'],
      [
        () => new PostgresLockProvider({ connectionString: 'postgres://h/db', maxConnection: 2 } as never),
        'maxConnection',
        'maxConnections',
      ],
      [() => new RedisLockProvider({ url: 'redis://127.0.0.1:1' } as never), 'url', 'urls'],
      [() => new RedisLockProvider({ urls: 'redis://127.0.0.1:1', leaseMS: 500 } as never), 'leaseMS', 'leaseMs'],
      [() => new MemoryDistributedLock({ ttl: 500 } as never), 'ttl', 'ttlMs'],
      // redlock's `ttl` is distlock's `leaseMs`, though `tls` is one letter away.
      [() => new RedisLockProvider({ urls: 'redis://127.0.0.1:1', ttl: 500 } as never), 'ttl', 'leaseMs'],
      [
        () => new RedisLockProvider({ urls: 'redis://127.0.0.1:1', lockTimeout: 500 } as never),
        'lockTimeout',
        'leaseMs',
      ],
      [() => new FileDistributedLock({ maxRetry: 3 } as never), 'maxRetry', 'maxRetries'],
      [
        () => new RedisDistributedLock({ urls: 'redis://127.0.0.1:1', retryInterval: 5 } as never),
        'retryInterval',
        'retryIntervalMs',
      ],
      [
        () => new PostgresDistributedLock({ connectionString: 'postgres://h/db', scop: 'session' } as never),
        'scop',
        'scope',
      ],
      [() => new MemoryDistributedLock({ colour: 'red' } as never), 'colour', undefined],
    ]
    for (const [make, key, near] of cases) {
      let err: (Error & { code?: string }) | undefined
      try {
        make()
      } catch (e) {
        err = e as Error & { code?: string }
      }
      expect(err, key).toBeInstanceOf(TypeError)
      expect(err!.code).toBe('ERR_INVALID_ARG_VALUE')
      expect(err!.message).toContain(`unknown property "${key}"`)
      if (near) expect(err!.message).toContain(`Did you mean "${near}"?`)
      else expect(err!.message).toContain('Known properties:')
    }
  })

  it('keyed calls check their options too', async () => {
    await using keyed = new MemoryDistributedLock()
    const err = await thrown(() => keyed.acquire('k', { timeoutMs: 10 } as never))
    expect(err.code).toBe('ERR_INVALID_ARG_VALUE')
    expect(err.message).toContain('unknown property "timeoutMs"')
    expect(await keyed.isLocked('k')).toBe(false)
  })
})

/** A minimal signal of another realm or library: not an instance of AbortSignal. */
function likeSignal() {
  const listeners = new Set<() => void>()
  const s = {
    aborted: false,
    reason: undefined as unknown,
    addEventListener: (_: 'abort', l: () => void) => void listeners.add(l),
    removeEventListener: (_: 'abort', l: () => void) => void listeners.delete(l),
    abort(reason: unknown) {
      s.aborted = true
      s.reason = reason
      for (const l of listeners) l()
    },
    listeners,
  }
  return s
}

describe('signals shaped like AbortSignal', () => {
  it('cancels a wait, and an aborted one cancels before waiting', async () => {
    await using locks = new FileLockProvider({ directory: tempDir('like-signal') })
    const held = await locks.createLock('sig').acquire()
    const signal = likeSignal()
    const waiting = locks.createLock('sig').acquire({ signal })
    setTimeout(() => signal.abort('stop'), 50)
    const err = await thrown(() => waiting)
    expect(err).toBeInstanceOf(AbortError)
    expect(err.cause).toBe('stop')
    expect(signal.listeners.size).toBe(0)
    expect((await thrown(() => locks.createLock('sig').acquire({ signal }))).name).toBe('AbortError')
    await held.release()
    const h = await locks.createLock('sig').acquire({ signal: likeSignal(), timeoutMs: 1_000 })
    await h.release()
    // Not signal-shaped: a type error.
    const bad = await thrown(() => locks.createLock('sig').acquire({ signal: { aborted: false } as never }))
    expect(bad.code).toBe('ERR_INVALID_ARG_TYPE')
  })
})

describe('name length', () => {
  it('names up to 1024 UTF-8 bytes are accepted, longer ones refused with the limit named', async () => {
    await using locks = new FileLockProvider({ directory: tempDir('names') })
    const h = await locks.createLock('n'.repeat(1024)).acquire()
    await h.release()
    // 342 × 3 bytes = 1026 bytes in 342 characters.
    for (const name of ['n'.repeat(1025), '漢'.repeat(342)]) {
      let err: (Error & { code?: string }) | undefined
      try {
        locks.createLock(name)
      } catch (e) {
        err = e as Error & { code?: string }
      }
      expect(err).toBeInstanceOf(RangeError)
      expect(err!.code).toBe('ERR_INVALID_ARG_VALUE')
      expect(err!.message).toMatch(/name.*must be at most 1024 bytes in UTF-8, got 102[56] bytes/)
    }
  })
})
