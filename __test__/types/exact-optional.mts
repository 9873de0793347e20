// Options passed with an explicit `undefined`, as code that forwards its own optional settings
// writes them, compile under `exactOptionalPropertyTypes`.
import { FileLockProvider, MemoryDistributedLock, RedisLockProvider, type AcquireOptions } from 'distlock'

declare const caFromConfig: string[] | undefined
declare const timeoutFromConfig: number | undefined

const redis = new RedisLockProvider({
  urls: ['redis://127.0.0.1:6379'],
  tls: undefined,
  keyPrefix: undefined,
  leaseMs: undefined,
})
const secure = new RedisLockProvider({ urls: ['rediss://cache:6380'], tls: caFromConfig && { ca: caFromConfig } })
const files = new FileLockProvider({ directory: undefined, maxHoldMs: undefined })
const options: AcquireOptions = { timeoutMs: timeoutFromConfig, signal: undefined }
const keyed = new MemoryDistributedLock({ ttlMs: undefined, maxRetries: undefined })

export async function run(): Promise<void> {
  const h = await files.createLock('x').acquire(options)
  await h.release()
  await keyed.acquire('k', { signal: undefined })
  await Promise.all([redis.close(), secure.close(), files.close()])
}
