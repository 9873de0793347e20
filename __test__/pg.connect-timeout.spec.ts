// PostgreSQL connectTimeoutMs: a login that never answers (a loopback server that accepts and
// says nothing) is bounded by it, apart from opTimeoutMs.
import { describe, expect, it } from 'vitest'
import { LockBackendError, PostgresLockProvider } from 'distlock'

import { silentServer, thrown } from './helpers'

describe('PostgreSQL connectTimeoutMs', () => {
  it('bounds a login that never answers, separately from opTimeoutMs', async () => {
    // Accepts connections and never says a word: the login hangs.
    await using silent = await silentServer()
    const { port } = silent
    // A block of its own: the provider closes before the server does.
    {
      await using pg = new PostgresLockProvider({
        connectionString: `postgres://app@127.0.0.1:${port}/app?sslmode=disable`,
        connectTimeoutMs: 300,
        opTimeoutMs: 5_000,
      })
      const started = performance.now()
      const err = await thrown(() => pg.createLock('login').tryAcquire())
      const took = performance.now() - started
      expect(err).toBeInstanceOf(LockBackendError)
      expect(err.message).toContain('no answer to the login within 300 ms')
      expect(took).toBeGreaterThanOrEqual(290)
      expect(took).toBeLessThan(2_000)
      expect(() => new PostgresLockProvider({ connectionString: 'postgres://a@h/db', connectTimeoutMs: -1 })).toThrow(
        /connectTimeoutMs/,
      )
    }
  })
})
