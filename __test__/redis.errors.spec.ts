// The Redis provider's connection errors through the public API: what their messages say and
// carry (Node's error codes, no Rust Debug text, no doubled prefixes, a hint when the URL's TLS
// does not match the server's), and that close() after them, or with a server that stopped
// answering, settles within its bound. Against redis-server processes this spec starts, a
// loopback port nobody listens on and a name that does not resolve.
import Redis from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { LockBackendError, RedisLockProvider } from 'distlock'

import type { RedisServer } from '../lab/index.mjs' with { 'resolution-mode': 'import' }

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
let services: Services
let plain: RedisServer
let tlsOnly: RedisServer
let refused: number
let seq = 0
const unique = (tag: string) => `errors-${tag}-${process.pid}-${seq++}`

// A loose safety bound for close() after a connection error, when nothing is held: a budget
// check (it used to take the server timeout, 1 000 ms), not a benchmark.
const CLOSE_AFTER_ERROR_MS = 300

beforeAll(async () => {
  services = await import('../lab/index.mjs')
  plain = await services.startRedis()
  tlsOnly = await services.startRedis([], { tls: true })
  refused = await services.freePort()
})

afterAll(() => services.stopServices())

/** The error of a try or of an acquire with a 1 s timeout on a provider of `url`, which must fail. */
async function failure(p: RedisLockProvider, how: 'try' | 'acquire'): Promise<LockBackendError> {
  const lock = p.createLock(unique(how))
  const attempt = how === 'try' ? lock.tryAcquire() : lock.acquire({ timeoutMs: 1_000 })
  const err: unknown = await attempt.then(
    () => new Error('the acquire succeeded'),
    (e: unknown) => e,
  )
  expect(err, String(err)).toBeInstanceOf(LockBackendError)
  return err as LockBackendError
}

/** The message is words: no Rust Debug text, the lock named once. */
function expectWords(message: string) {
  expect(message).not.toMatch(/Custom \{|Os \{|kind: /)
  expect(message).not.toMatch(/lock "redis |\\"/)
}

/** How long `p.close()` takes, in ms. */
async function closeMs(p: RedisLockProvider): Promise<number> {
  const t = performance.now()
  await p.close()
  return performance.now() - t
}

describe.each(['try', 'acquire'] as const)('a %s that cannot connect', (how) => {
  it('to a refused port: ECONNREFUSED, words, and close() at once', async () => {
    const p = new RedisLockProvider({ urls: [`redis://127.0.0.1:${refused}`] })
    const err = await failure(p, how)
    expect((err.cause as { code?: string }).code).toBe('ECONNREFUSED')
    expect(err.message).toContain(`127.0.0.1:${refused}`)
    expectWords(err.message)
    expect(await closeMs(p)).toBeLessThan(CLOSE_AFTER_ERROR_MS)
  })

  it('to a name that does not resolve: ENOTFOUND, words, and close() at once', async () => {
    const p = new RedisLockProvider({ urls: ['redis://no-such-host.invalid:6379'] })
    const err = await failure(p, how)
    expect((err.cause as { code?: string }).code).toBe('ENOTFOUND')
    expect(err.message).toContain('no-such-host.invalid:6379')
    expectWords(err.message)
    expect(await closeMs(p)).toBeLessThan(CLOSE_AFTER_ERROR_MS)
  })

  it('with rediss:// to a server without TLS: the hint, and close() at once', async () => {
    const p = new RedisLockProvider({ urls: [`rediss://127.0.0.1:${plain.port}`] })
    const err = await failure(p, how)
    expect(err.message).toContain(`the URL is rediss://: is TLS enabled on 127.0.0.1:${plain.port}?`)
    expectWords(err.message)
    expect(await closeMs(p)).toBeLessThan(CLOSE_AFTER_ERROR_MS)
  })

  it('with redis:// to a server that speaks only TLS: the hint, and close() at once', async () => {
    const p = new RedisLockProvider({ urls: [`redis://127.0.0.1:${tlsOnly.port}`] })
    const err = await failure(p, how)
    expect(err.message).toContain(`the URL is redis://: does 127.0.0.1:${tlsOnly.port} want TLS (rediss://)?`)
    expectWords(err.message)
    expect(await closeMs(p)).toBeLessThan(CLOSE_AFTER_ERROR_MS)
  })
})

describe('a server whose TLS certificate is not trusted', () => {
  it('is refused at once, in words that say why', async () => {
    const p = new RedisLockProvider({ urls: [tlsOnly.url] })
    const t = performance.now()
    const err = await failure(p, 'acquire')
    // No retry cures it: the acquire does not ride it out to its timeout.
    expect(performance.now() - t).toBeLessThan(500)
    expect(err.message).toContain('invalid peer certificate: UnknownIssuer (is the CA that signed it in tls.ca?)')
    expect(err.message).not.toContain('is TLS enabled')
    expectWords(err.message)
    expect(await closeMs(p)).toBeLessThan(CLOSE_AFTER_ERROR_MS)
  })
})

describe('other calls on a server that cannot be reached', () => {
  it('getInfo names the server in words, with its code, and close() is at once', async () => {
    const p = new RedisLockProvider({ urls: [`redis://127.0.0.1:${refused}`] })
    const err: unknown = await p
      .createLock(unique('info'))
      .getInfo()
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    const { message, cause } = err as LockBackendError
    expect((cause as { code?: string }).code).toBe('ECONNREFUSED')
    expectWords(message)
    expect(await closeMs(p)).toBeLessThan(CLOSE_AFTER_ERROR_MS)
  })
})

describe('close() with locks held', () => {
  it('releases them on a server that answers, at once', async () => {
    const raw = new Redis(plain.url)
    try {
      const p = new RedisLockProvider({ urls: [plain.url] })
      const names = Array.from({ length: 20 }, () => unique('held'))
      const handles = await Promise.all(names.map((n) => p.createLock(n).acquire({ timeoutMs: 1_000 })))
      expect(await raw.exists(...names)).toBe(names.length)
      expect(await closeMs(p)).toBeLessThan(CLOSE_AFTER_ERROR_MS)
      expect(await raw.exists(...names)).toBe(0)
      expect(handles.every((h) => h.signal.aborted)).toBe(true)
    } finally {
      raw.disconnect()
    }
  })

  it('settles within serverTimeoutMs when the server stopped answering, however many locks', async () => {
    const server = await services.startRedis()
    const serverTimeoutMs = 400
    const p = new RedisLockProvider({ urls: [server.url], serverTimeoutMs })
    try {
      const names = Array.from({ length: 5 }, () => unique('paused'))
      for (const n of names) await p.createLock(n).acquire({ timeoutMs: 1_000 })
      // Subscribed too: a waiter that joined the wake-ups (it gives up at once).
      expect(
        await p
          .createLock(names[0]!)
          .acquire({ timeoutMs: 50 })
          .catch(() => 'busy'),
      ).toBe('busy')
      server.pause()
      // Within the bound plus a loose margin; it used to be one server timeout per lock, then
      // one per connection.
      expect(await closeMs(p)).toBeLessThan(serverTimeoutMs + 250)
    } finally {
      server.resume()
      server.stop()
    }
  })
})
