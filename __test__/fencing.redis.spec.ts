// The Redis guard (fencedSet, fencedHset, fencedEval) on a real redis-server, through ioredis
// and through the node-redis call shape, and a holder frozen past its lease.
import { createRequire } from 'node:module'

import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest'

import {
  RedisLockProvider,
  StaleFencingTokenError,
  fencedEval,
  fencedHset,
  fencedSet,
  redisFenceKey,
  type NodeRedisLike,
  type RedisClientLike,
} from 'distlock'

import { frozenHolder } from './fixtures/fencing-frozen'

/** The Cluster hash slot of a key (ioredis's own dependency). */
const calculateSlot = createRequire(__filename)('cluster-key-slot') as (key: string) => number

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

let seq = 0
const unique = (tag: string) => `fencing:${tag}:${process.pid}:${seq++}`

let services: Services
let redisUrl: string
let redis: Redis
beforeAll(async () => {
  services = await import('../lab/index.mjs')
  redisUrl = (await services.startRedis()).url
  redis = new Redis(redisUrl)
})
afterAll(async () => {
  await redis?.quit()
  services?.stopServices()
})

/**
 * node-redis's call shape, `eval(script, { keys, arguments })` and `isOpen`, over the ioredis
 * connection (node-redis itself is not among the dev dependencies).
 */
function nodeRedisShape(client: Redis): NodeRedisLike & { calls: number } {
  const shim = {
    calls: 0,
    isOpen: true,
    eval(script: string, options: { keys?: string[]; arguments?: string[] }) {
      shim.calls++
      for (const a of options.arguments ?? [])
        if (typeof a !== 'string') throw new TypeError('node-redis takes strings')
      const keys = options.keys ?? []
      return client.eval(script, keys.length, ...keys, ...(options.arguments ?? []))
    },
  }
  return shim
}

describe.each([
  ['ioredis', () => redis as RedisClientLike],
  ['the node-redis shape', () => nodeRedisShape(redis)],
])('Redis guards through %s', (_, client) => {
  it('fencedSet accepts a larger or equal token and rejects a smaller one without writing', async () => {
    const key = unique('set')
    const r = client()
    await fencedSet(r, key, 'one', { token: 5n })
    await fencedSet(r, key, 'two', { token: 5n })
    await fencedSet(r, key, 3, { token: 9n })
    expect(await redis.get(key)).toBe('3')
    expect(await redis.get(redisFenceKey(key))).toBe('9')
    const err = await fencedSet(r, key, 'stale', { token: 8n }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(StaleFencingTokenError)
    expect(err).toMatchObject({ code: 'ERR_STALE_FENCING_TOKEN', resource: key, token: 8n, current: 9n })
    expect(await redis.get(key)).toBe('3')
    expect(await redis.get(redisFenceKey(key))).toBe('9')
  })

  it('fencedSet takes an expiry for the value, never for the fence, and a fence key of your own', async () => {
    const key = unique('px')
    await fencedSet(client(), key, 'v', { token: 1n, px: 60_000, fenceKey: `${key}:mine` })
    expect(await redis.pttl(key)).toBeGreaterThan(50_000)
    expect(await redis.get(`${key}:mine`)).toBe('1')
    expect(await redis.pttl(`${key}:mine`)).toBe(-1)
    await expect(fencedSet(client(), key, 'v', { token: 0n, fenceKey: `${key}:mine` })).rejects.toMatchObject({
      current: 1n,
    })
  })

  it('fencedHset writes the fields or, stale, none of them', async () => {
    const key = unique('hset')
    const r = client()
    expect(await fencedHset(r, key, { status: 'open', amount: 10 }, { token: 2n })).toBe(2)
    await expect(fencedHset(r, key, { status: 'stale', extra: 'x' }, { token: 1n })).rejects.toThrow(
      StaleFencingTokenError,
    )
    expect(await redis.hgetall(key)).toEqual({ status: 'open', amount: '10' })
    expect(await fencedHset(r, key, { status: 'paid' }, { token: 2n })).toBe(0)
    expect(await redis.hget(key, 'status')).toBe('paid')
  })

  it('fencedEval runs your script after the check, with its own KEYS and ARGV, or not at all', async () => {
    const [a, b] = [unique('eval-a'), unique('eval-b')]
    const script = `redis.call('INCRBY', KEYS[1], ARGV[1])
      redis.call('SET', KEYS[2], ARGV[2])
      return { #KEYS, #ARGV, KEYS[2], ARGV[2] }`
    const r = client()
    expect(await fencedEval(r, script, { keys: [a, b], arguments: [5, 'hello'], token: 7n })).toEqual([
      2,
      2,
      b,
      'hello',
    ])
    await expect(fencedEval(r, script, { keys: [a, b], arguments: [5, 'stale'], token: 6n })).rejects.toMatchObject({
      token: 6n,
      current: 7n,
      resource: a,
    })
    expect(await redis.mget(a, b)).toEqual(['5', 'hello'])
    // The script's own errors are not fencing errors.
    await expect(fencedEval(r, "return redis.call('NOPE')", { keys: [a], token: 7n })).rejects.toThrow(
      /NOPE|[Uu]nknown/,
    )
  })

  it('compares tokens beyond 2^53 exactly', async () => {
    const key = unique('big')
    const big = (1n << 62n) + 1n
    await fencedSet(client(), key, 'big', { token: big })
    await expect(fencedSet(client(), key, 'one less', { token: big - 1n })).rejects.toMatchObject({ current: big })
    await fencedSet(client(), key, 'equal', { token: big })
    await expect(fencedSet(client(), key, 'shorter', { token: 99n })).rejects.toMatchObject({ current: big })
    expect(await redis.get(key)).toBe('equal')
  })
})

describe('Redis guards', () => {
  it('refuse a client of neither shape, naming both', async () => {
    for (const wrong of [null, {}, { eval: async () => null }, new RedisLockProvider({ urls: redisUrl })]) {
      await expect(fencedSet(wrong as unknown as RedisClientLike, 'k', 'v', { token: 1n })).rejects.toThrow(
        /^The "redis" argument must be an ioredis client \(new Redis\(\), new Cluster\(\)\) or a node-redis v4\/v5 client/,
      )
    }
    await expect(fencedSet(redis, 'k', 'v', { token: 1 as unknown as bigint })).rejects.toThrow(/must be a bigint/)
    await expect(fencedSet(redis, 'k', {} as unknown as string, { token: 1n })).rejects.toThrow(TypeError)
    await expect(fencedEval(redis, 'return 1', { keys: [], token: 1n })).rejects.toThrow(/at least one key/)
  })

  it('puts the fence key in the data key’s Cluster hash slot', () => {
    for (const key of ['invoice:42', '{user:7}:profile', 'a{b', 'x{y}z', 'plain']) {
      expect(calculateSlot(redisFenceKey(key)), key).toBe(calculateSlot(key))
    }
    expect(redisFenceKey('invoice:42')).toBe('{invoice:42}:fence')
    expect(redisFenceKey('{user:7}:profile')).toBe('{user:7}:profile:fence')
  })

  it('many concurrent writers: the value is the largest token’s, and every smaller-than-seen write is refused', async () => {
    const key = unique('race')
    const clients = [redis, new Redis(redisUrl), new Redis(redisUrl)]
    try {
      const tokens = Array.from({ length: 60 }, (_, i) => BigInt(i + 1)).toSorted(() => Math.random() - 0.5)
      const outcomes = await Promise.all(
        tokens.map((token, i) =>
          fencedSet(clients[i % 3]!, key, `token ${token}`, { token }).then(
            () => 'ok',
            (err: unknown) => (err instanceof StaleFencingTokenError ? 'stale' : Promise.reject(err)),
          ),
        ),
      )
      expect(await redis.get(key)).toBe('token 60')
      expect(outcomes.filter((o) => o === 'stale').length).toBeGreaterThan(0)
    } finally {
      await Promise.all(clients.slice(1).map((c) => c.quit()))
    }
  })

  it('a holder frozen past its lease is rejected when it wakes; the newer holder’s value is intact', async () => {
    const key = unique('frozen')
    const run = await frozenHolder('redis', redisUrl, redisUrl, key, (token) =>
      fencedSet(redis, key, 'written by the newer holder', { token }),
    )
    expect(run.newer).toBeGreaterThan(run.stale)
    expect(run.result).toBe(`REJECTED ERR_STALE_FENCING_TOKEN ${run.stale} ${run.newer} ${key}`)
    expect(await redis.get(key)).toBe('written by the newer holder')
    expect(await redis.get(redisFenceKey(key))).toBe(String(run.newer))
  })

  it('types: ioredis clients fit, and the callers get exact results', () => {
    expectTypeOf<Redis>().toExtend<RedisClientLike>()
    expectTypeOf(fencedSet).returns.toEqualTypeOf<Promise<void>>()
    expectTypeOf(fencedHset).returns.toEqualTypeOf<Promise<number>>()
    expectTypeOf(fencedEval).returns.toEqualTypeOf<Promise<unknown>>()
  })
})
