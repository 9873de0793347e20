/**
 * The Redis guard: one Lua script compares the write's fencing token with the one stored in a
 * fence key beside the data, records it, and writes, or rejects without writing anything.
 */
import { checkKeys, invalidArgType } from '../errors'
import { typeName } from '../options'
import { StaleFencingTokenError, checkResource, checkToken, parseStored } from './error'

/** An `ioredis` client (`Redis` or `Cluster`): `eval(script, numKeys, ...keysAndArgs)`. */
export interface IoRedisLike {
  /** Runs a Lua script. */
  eval(script: string, numKeys: number, ...keysAndArgs: Array<string | Buffer | number>): Promise<unknown>
  /** ioredis's own, how the guard tells it from node-redis. */
  defineCommand(name: string, definition: { lua: string; numberOfKeys?: number }): void
}

/** A node-redis v4 or v5 client (`createClient`, `createCluster`): `eval(script, { keys, arguments })`. */
export interface NodeRedisLike {
  /** Runs a Lua script. */
  eval(script: string, options: { keys?: string[]; arguments?: string[] }): Promise<unknown>
  /** node-redis's own, how the guard tells it from ioredis. */
  readonly isOpen: boolean
}

/** A Redis client the guards take: your own `ioredis` or `redis` (node-redis) client. */
export type RedisClientLike = IoRedisLike | NodeRedisLike

/** A value Redis stores: a string, a number (stored as its decimal text) or bytes. */
export type RedisValue = string | number | Buffer

/** The fence of a Redis write. */
export interface RedisFenceOptions {
  /** The writer's fencing token: `handle.fencingToken`. */
  token: bigint
  /** The key that keeps the largest token written; default {@link redisFenceKey} of the data key. */
  fenceKey?: string
}

/** What {@link fencedSet} takes. */
export interface FencedSetOptions extends RedisFenceOptions {
  /** An expiry of the value in milliseconds, as `SET key value PX ms`. The fence key never expires. */
  px?: number
}

/** What {@link fencedEval} takes. */
export interface FencedEvalOptions extends RedisFenceOptions {
  /** The script's keys, its `KEYS` (the first is the fenced one). */
  keys: string[]
  /** The script's arguments, its `ARGV`. */
  arguments?: RedisValue[]
}

/**
 * The check that runs before the write. The fence key and the token come last in KEYS and
 * ARGV; the body sees KEYS and ARGV without them. Tokens are compared as decimal strings
 * (length, then digits), since Lua's numbers are doubles and tokens go up to 2^63 - 1.
 */
const CHECK = `
local fence_key, token = KEYS[#KEYS], ARGV[#ARGV]
local current = redis.call('GET', fence_key)
if current and (#current > #token or (#current == #token and current > token)) then
  return redis.error_reply('DISTLOCK_STALE_FENCE ' .. current)
end
if current ~= token then redis.call('SET', fence_key, token) end
local KEYS = { unpack(KEYS, 1, #KEYS - 1) }
local ARGV = { unpack(ARGV, 1, #ARGV - 1) }
`
/** The prefix of the check's error reply; what follows is the stored token. */
const STALE_REPLY = 'DISTLOCK_STALE_FENCE '

const SET = `if ARGV[2] then return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return redis.call('SET', KEYS[1], ARGV[1])`
const HSET = `return redis.call('HSET', KEYS[1], unpack(ARGV))`

/**
 * The fence key of a data key: `{key}:fence`, so that in a Redis Cluster it has the key's hash
 * slot (the braces are a hash tag of the whole key), or `key:fence` when the key has a hash
 * tag of its own (the same tag). A key with a `}` but no hash tag gets `key:fence`, which a
 * Cluster may place in another slot: give such keys a `fenceKey` of their own.
 *
 * ```ts
 * import { redisFenceKey } from 'distlock'
 * redisFenceKey('invoice:42') // '{invoice:42}:fence'
 * redisFenceKey('{user:7}:profile') // '{user:7}:profile:fence'
 * ```
 */
export function redisFenceKey(key: string): string {
  checkResource(key, 'key')
  const open = key.indexOf('{')
  const close = open < 0 ? -1 : key.indexOf('}', open + 1)
  if (close > open + 1 || key.includes('}')) return `${key}:fence`
  return `{${key}}:fence`
}

/** How to call EVAL on `redis`; a TypeError naming what was expected for anything else. */
function evaluator(redis: unknown): (script: string, keys: string[], args: RedisValue[]) => Promise<unknown> {
  const client = redis as Record<string, unknown> | null
  if (typeof client === 'object' && client !== null && typeof client.eval === 'function') {
    const evalFn = client.eval as (...args: unknown[]) => Promise<unknown>
    if (typeof client.defineCommand === 'function') {
      return (script, keys, args) => evalFn.call(client, script, keys.length, ...keys, ...args)
    }
    if (typeof client.isOpen === 'boolean') {
      // node-redis takes strings or buffers only.
      return (script, keys, args) =>
        evalFn.call(client, script, { keys, arguments: args.map((a) => (typeof a === 'number' ? String(a) : a)) })
    }
  }
  throw invalidArgType(
    `The "redis" argument must be an ioredis client (new Redis(), new Cluster()) or a node-redis v4/v5 client (createClient(), createCluster()). Received ${typeName(redis)}`,
  )
}

/** Runs `body` under the check; a stale token becomes a StaleFencingTokenError. */
async function evalFenced(
  redis: RedisClientLike,
  body: string,
  keys: string[],
  args: RedisValue[],
  options: RedisFenceOptions,
): Promise<unknown> {
  const call = evaluator(redis)
  const token = checkToken(options.token, 'options.token')
  const key = keys[0]!
  const fenceKey =
    options.fenceKey === undefined ? redisFenceKey(key) : checkResource(options.fenceKey, 'options.fenceKey')
  try {
    return await call(
      `${CHECK}\nlocal function body()\n${body}\nend\nreturn body()`,
      [...keys, fenceKey],
      [...args, token.toString()],
    )
  } catch (err) {
    const message = (err as { message?: unknown } | null)?.message
    if (typeof message !== 'string' || !message.startsWith(STALE_REPLY)) throw err
    const current = parseStored(message.slice(STALE_REPLY.length).trim(), `the fence key ${fenceKey}`)
    throw new StaleFencingTokenError({ resource: key, token, current, cause: err })
  }
}

function checkValue(value: unknown, what: string): RedisValue {
  if (typeof value === 'string' || typeof value === 'number' || Buffer.isBuffer(value)) return value
  throw invalidArgType(`The "${what}" argument must be a string, a number or a Buffer. Received ${typeName(value)}`)
}

function checkObject(options: unknown, known: string[]): void {
  if (typeof options !== 'object' || options === null) {
    throw invalidArgType(`The "options" argument must be of type object. Received ${typeName(options)}`)
  }
  checkKeys(options, known)
}

/**
 * `SET key value` on your own Redis client, only if `token` is not below the largest token
 * written to `key` (kept in its fence key, {@link redisFenceKey}); one Lua script, so the check
 * and the write are atomic. Equal tokens are accepted: one holder may write many times.
 *
 * ```ts
 * import { fencedSet, type IoRedisLike } from 'distlock'
 * declare const redis: IoRedisLike
 * await fencedSet(redis, 'report:today', 'done', { token: 7n })
 * ```
 * @throws {@link StaleFencingTokenError} when a larger token has written the key: nothing was
 * written. TypeError for a client that is neither an ioredis nor a node-redis client.
 */
export async function fencedSet(
  redis: RedisClientLike,
  key: string,
  value: RedisValue,
  options: FencedSetOptions,
): Promise<void> {
  checkObject(options, ['token', 'fenceKey', 'px'])
  checkResource(key, 'key')
  const args = [checkValue(value, 'value')]
  if (options.px !== undefined) {
    if (!Number.isSafeInteger(options.px) || options.px <= 0) {
      throw invalidArgType(`The "options.px" argument must be a positive integer. Received ${typeName(options.px)}`)
    }
    args.push(options.px)
  }
  await evalFenced(redis, SET, [key], args, options)
}

/**
 * `HSET key field value …` on your own Redis client, only if `token` is not below the largest
 * token written to `key` (kept in its fence key); atomic, as {@link fencedSet}. Resolves to the
 * number of fields added, as `HSET`.
 *
 * ```ts
 * import { fencedHset, type IoRedisLike } from 'distlock'
 * declare const redis: IoRedisLike
 * await fencedHset(redis, 'invoice:42', { status: 'paid', amount: 120 }, { token: 7n })
 * ```
 * @throws {@link StaleFencingTokenError} when a larger token has written the key: nothing was
 * written.
 */
export async function fencedHset(
  redis: RedisClientLike,
  key: string,
  fields: Record<string, RedisValue>,
  options: RedisFenceOptions,
): Promise<number> {
  checkObject(options, ['token', 'fenceKey'])
  checkResource(key, 'key')
  if (typeof fields !== 'object' || fields === null || Object.keys(fields).length === 0) {
    throw invalidArgType(
      `The "fields" argument must be an object with at least one field. Received ${typeName(fields)}`,
    )
  }
  const args = Object.entries(fields).flatMap(([f, v]) => [f, checkValue(v, `fields.${f}`)])
  return Number(await evalFenced(redis, HSET, [key], args, options))
}

/**
 * Runs your own Lua script under the fence of its first key: the check runs first, then your
 * script, in the same atomic script. Your script sees `KEYS` and `ARGV` as you passed them and
 * resolves to what it returns. A stale token rejects before your script runs.
 *
 * ```ts
 * import { fencedEval, type IoRedisLike } from 'distlock'
 * declare const redis: IoRedisLike
 * await fencedEval(redis, "return redis.call('INCRBY', KEYS[1], ARGV[1])", {
 *   keys: ['stock:42'],
 *   arguments: [-1],
 *   token: 7n,
 * })
 * ```
 * @throws {@link StaleFencingTokenError} when a larger token has written the first key:
 * nothing was written. Your script's own errors reject as your client reports them.
 */
export async function fencedEval(redis: RedisClientLike, script: string, options: FencedEvalOptions): Promise<unknown> {
  checkObject(options, ['keys', 'arguments', 'token', 'fenceKey'])
  if (typeof script !== 'string' || script.trim() === '') {
    throw invalidArgType(`The "script" argument must be a non-empty string of Lua. Received ${typeName(script)}`)
  }
  const { keys, arguments: args = [] } = options
  if (!Array.isArray(keys) || keys.length === 0) {
    throw invalidArgType(`The "options.keys" argument must be an array of at least one key. Received ${typeName(keys)}`)
  }
  keys.forEach((k, i) => checkResource(k, `options.keys[${i}]`))
  if (!Array.isArray(args)) {
    throw invalidArgType(`The "options.arguments" argument must be an array. Received ${typeName(args)}`)
  }
  return evalFenced(
    redis,
    script,
    keys,
    args.map((a, i) => checkValue(a, `options.arguments[${i}]`)),
    options,
  )
}
