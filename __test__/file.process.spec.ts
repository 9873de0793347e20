import { pbkdf2 } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { FileLockProvider } from 'distlock'

import { Child, tempDir } from './helpers'

const children: Child[] = []
function child(args: string[], execArgv: string[] = []): Child {
  const c = new Child('file-child.cjs', args, execArgv)
  children.push(c)
  return c
}
afterEach(() => {
  for (const c of children.splice(0)) c.kill()
})

describe('file locks across real processes', () => {
  it('4 processes doing read-modify-write under the lock lose no update', async () => {
    const dir = tempDir('xproc')
    const perChild = 150
    const procs = Array.from({ length: 4 }, () => child(['counter', dir, 'counter', String(perChild)]))
    const exits = await Promise.all(procs.map((p) => p.exit(60_000)))
    for (const [i, e] of exits.entries()) expect(e.code, procs[i].lines.join('\n')).toBe(0)
    expect(Number(readFileSync(join(dir, 'counter.txt'), 'utf8'))).toBe(4 * perChild)
  })

  it('a holder killed with kill -9 frees the lock at once', async () => {
    const dir = tempDir('kill9')
    const holder = child(['hold', dir, 'job'])
    await holder.line('HOLDING')
    await using p = new FileLockProvider({ directory: dir })
    const lock = p.createLock('job')
    expect(await lock.tryAcquire()).toBeNull()
    const waiting = lock.acquire({ timeoutMs: 10_000 })
    holder.kill('SIGKILL')
    const h = await waiting // rejects with LockTimeoutError if the OS kept the dead holder's lock
    expect(h.fencingToken).toBeGreaterThan(BigInt(holder.lines[0].split(' ')[1]))
    await h.release()
  })

  it('waiting on locks held elsewhere parks neither the libuv threadpool nor the runtime', async () => {
    const dir = tempDir('pool')
    const names = 16 // four times libuv's default threadpool size
    const holder = child(['hold-many', dir, 'busy', String(names)])
    await holder.line('HOLDING')
    await using p = new FileLockProvider({ directory: dir })
    const waits = Array.from({ length: names }, (_, i) => p.createLock(`busy-${i}`).acquire({ timeoutMs: 20_000 }))
    // Threadpool work (fs, crypto) still runs while all those waits are parked on the OS...
    await Promise.all(Array.from({ length: 8 }, () => stat(dir)))
    await new Promise<void>((resolve, reject) =>
      pbkdf2('pw', 'salt', 1000, 32, 'sha256', (err) => (err ? reject(err) : resolve())),
    )
    // ...and so do other locks.
    const free = await p.createLock('free').acquire({ timeoutMs: 5_000 })
    await free.release()
    holder.kill('SIGKILL')
    for (const h of await Promise.all(waits)) await h.release()
  })

  it('a pending acquire keeps the process alive until it is granted', async () => {
    const dir = tempDir('alive')
    await using p = new FileLockProvider({ directory: dir })
    const h = await p.createLock('k').acquire()
    const waiter = child(['wait', dir, 'k'])
    await waiter.line('WAITING')
    await new Promise((r) => setTimeout(r, 300))
    expect(waiter.proc.exitCode).toBeNull() // still waiting, not exited
    await h.release()
    await waiter.line('GOT')
    expect((await waiter.exit()).code).toBe(0)
  })

  it('an idle provider does not keep the process alive', async () => {
    const idle = child(['idle', tempDir('idle'), 'i'])
    const { code } = await idle.exit(10_000)
    expect(code).toBe(0)
    expect(idle.lines).toContain('DONE')
  })

  it('a handle that is garbage-collected without release is released', async () => {
    const gc = child(['gc', tempDir('gc'), 'g'], ['--expose-gc'])
    const { code } = await gc.exit(20_000)
    expect(code, gc.lines.join('\n')).toBe(0)
    expect(gc.lines.some((l) => l.startsWith('RELEASED_AFTER'))).toBe(true)
  })
})
