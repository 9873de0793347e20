// releaseOnExit in child processes holding a Redis lock: released on SIGTERM and SIGINT (the
// process still dies of the signal) and when the script ends, kept without the option, and an
// application's own signal listener decides what the signal does.
import { join } from 'node:path'
import Redis from 'ioredis'
import { describe, expect, it } from 'vitest'

import { useLab } from './helpers'

const lab = useLab({ redis: true })

/** Runs a child that takes the Redis lock `name` and then does `then`; returns how it ended. */
async function exitChild(name: string, providerOptions: string, then: string) {
  const { spawnSync } = await import('node:child_process')
  const script = `
    const { RedisLockProvider } = require('distlock')
    const locks = new RedisLockProvider({ urls: ${JSON.stringify(lab.redis.url)}, ${providerOptions} })
    ;(async () => {
      // Kept, as a holder keeps its handle (a handle collected early is released by the GC).
      globalThis.held = await locks.createLock(${JSON.stringify(name)}).acquire()
      ${then}
    })()
  `
  return spawnSync(process.execPath, ['-e', script], {
    cwd: join(__dirname, '..'),
    encoding: 'utf8',
    timeout: 20_000,
  })
}
const redisHas = async (name: string) => {
  const raw = new Redis(lab.redis.url)
  try {
    return await raw.exists(name)
  } finally {
    raw.disconnect()
  }
}

describe('releaseOnExit', () => {
  it('releases on SIGTERM and SIGINT, and the process still dies of the signal', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const name = `exit-${signal}`
      // A process with work going on (a server, say), as one that gets a signal usually is.
      const res = await exitChild(
        name,
        'releaseOnExit: true',
        `setInterval(() => {}, 1000); process.kill(process.pid, '${signal}')`,
      )
      expect(res.signal, res.stderr).toBe(signal)
      expect(await redisHas(name)).toBe(0)
    }
  })

  it('releases when the script ends without releasing; without the option the key stays', async () => {
    const res = await exitChild('exit-end', 'releaseOnExit: true', "console.log('done')")
    expect(res.status, res.stderr).toBe(0)
    expect(res.stdout).toBe('done\n')
    expect(await redisHas('exit-end')).toBe(0)

    const kept = await exitChild('exit-kept', 'leaseMs: 30000', "console.log('done')")
    expect(kept.status, kept.stderr).toBe(0)
    expect(await redisHas('exit-kept')).toBe(1)
    const killed = await exitChild('exit-killed', 'leaseMs: 30000', "process.kill(process.pid, 'SIGTERM')")
    expect(killed.signal).toBe('SIGTERM')
    expect(await redisHas('exit-killed')).toBe(1)
  })

  it('a listener of the application decides what a signal does', async () => {
    const res = await exitChild(
      'exit-own-listener',
      'releaseOnExit: true',
      `process.on('SIGTERM', () => setTimeout(() => { console.log('own handler'); process.exit(3) }, 300))
       process.kill(process.pid, 'SIGTERM')`,
    )
    expect(res.status).toBe(3)
    expect(res.stdout).toBe('own handler\n')
    expect(await redisHas('exit-own-listener')).toBe(0)
  })
})
