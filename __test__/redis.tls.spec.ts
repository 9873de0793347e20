// The Redis provider's tls options against a TLS redis-server this spec starts that checks
// client certificates: the ca trusted, a client certificate presented, and bad material named.
import { describe, expect, it } from 'vitest'
import { LockBackendError, RedisLockProvider } from 'distlock'

import { thrown, useLab } from './helpers'

const lab = useLab({ redis: true })

describe('Redis TLS options', () => {
  it('trusts the ca given, presents a client certificate, and names what is wrong with bad material', async () => {
    const { readFileSync } = await import('node:fs')
    // The server checks clients: only a client with a certificate from its CA gets in.
    const tls = await lab.services.startRedis(['--tls-auth-clients', 'yes'], { tls: true })
    try {
      const ca = readFileSync(tls.caFile!)
      await using trusted = new RedisLockProvider({
        urls: tls.url,
        tls: { ca, cert: readFileSync(tls.certFile!, 'utf8'), key: readFileSync(tls.keyFile!) },
      })
      const h = await trusted.createLock('tls-opts').acquire({ timeoutMs: 5_000 })
      expect(h.isHeld).toBe(true)
      await h.release()

      // Without a client certificate the server refuses the handshake: a backend error, at once.
      await using anonymous = new RedisLockProvider({ urls: tls.url, tls: { ca }, serverTimeoutMs: 1_000 })
      expect(await thrown(() => anonymous.createLock('tls-opts').acquire({ timeoutMs: 2_000 }))).toBeInstanceOf(
        LockBackendError,
      )

      for (const [tlsOption, message] of [
        [{ ca: 'not a certificate' }, /tls.*ca holds no PEM certificate/],
        [{ ca, cert: readFileSync(tls.certFile!) }, /tls.*cert and key must be given together/],
        [{ ca, cert: 'x', key: 'y' }, /tls.*cert holds no PEM certificate/],
      ] as const) {
        expect(() => new RedisLockProvider({ urls: tls.url, tls: tlsOption })).toThrow(message)
      }
      expect(() => new RedisLockProvider({ urls: lab.redis.url, tls: { ca } })).toThrow(/no URL is rediss:\/\//)
      expect(() => new RedisLockProvider({ urls: tls.url, tls: { cafile: 'x' } as never })).toThrow(
        'The "options.tls" argument has an unknown property "cafile". Did you mean "ca"?',
      )
    } finally {
      tls.stop()
    }
  })
})
