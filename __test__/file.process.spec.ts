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

  it('removing unused lock files while 4 processes contend loses no update and no grant', async () => {
    const dir = tempDir('cleanup')
    const perChild = 150
    const procs = Array.from({ length: 4 }, () => child(['counter', dir, 'counter', String(perChild)]))
    await using cleaner = new FileLockProvider({ directory: dir })
    let removed = 0
    let runs = 0
    const state = { running: true }
    const exits = Promise.all(procs.map((p) => p.exit(60_000))).finally(() => (state.running = false))
    // Every few ms, as hard as a cleaner could ever run: whatever is free at that moment goes.
    while (state.running) {
      removed += await cleaner.removeUnusedLockFiles()
      runs++
      await new Promise((r) => setTimeout(r, 2))
    }
    for (const [i, e] of (await exits).entries()) expect(e.code, procs[i].lines.join('\n')).toBe(0)
    // Each child also checked that its tokens only went up.
    expect(Number(readFileSync(join(dir, 'counter.txt'), 'utf8'))).toBe(4 * perChild)
    expect(runs).toBeGreaterThan(10)
    expect(removed).toBeGreaterThan(0) // the fault happened: files were removed under them
  })

  it('removeUnusedLockFiles removes free lock files only, and none of other programs', async () => {
    const dir = tempDir('cleanup-free')
    await using p = new FileLockProvider({ directory: dir })
    for (const name of ['a', 'b', 'c']) await (await p.createLock(name).acquire()).release()
    await (await p.createSemaphore('s', 2).acquire()).release()
    const held = await p.createLock('held').acquire()
    const { readdirSync, writeFileSync } = await import('node:fs')
    writeFileSync(join(dir, 'notes.txt'), 'not a lock')
    writeFileSync(join(dir, 'report-0123456789abcdef.lock.bak'), 'not a lock either')
    const before = readdirSync(dir)
    const removed = await p.removeUnusedLockFiles()
    const after = readdirSync(dir)
    expect(removed).toBe(before.length - after.length)
    expect(after.toSorted()).toEqual(
      [before.find((f) => f.startsWith('held-'))!, 'notes.txt', 'report-0123456789abcdef.lock.bak'].toSorted(),
    )
    // The held lock still excludes, and the removed names lock again as before.
    expect(await p.createLock('held').tryAcquire()).toBeNull()
    const again = await p.createLock('a').acquire({ timeoutMs: 1_000 })
    await again.release()
    await held.release()
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
