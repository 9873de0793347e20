// The provider the examples use: the file backend in a local directory (the embedded default),
// or Redis when DISTLOCK_EXAMPLE_REDIS is set to one or more comma-separated URLs.
import { FileLockProvider, RedisLockProvider } from 'distlock'

export function makeProvider() {
  const redis = process.env.DISTLOCK_EXAMPLE_REDIS
  if (redis) return new RedisLockProvider({ urls: redis.split(','), leaseMs: 1_000 })
  return new FileLockProvider(process.env.DISTLOCK_EXAMPLE_DIR ? { directory: process.env.DISTLOCK_EXAMPLE_DIR } : {})
}
