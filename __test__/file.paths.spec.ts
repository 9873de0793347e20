import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { FileLockProvider } from 'distlock'

import { ROOT, eventually, tempDir } from './helpers'

const CLI = join(ROOT, 'bin', 'distlock.js')

/** The README's name mapping, written out again from its words (not from the Rust code). */
function documentedFileName(name: string): string {
  let prefix = [...name]
    .slice(0, 64)
    .map((c) => (/^[A-Za-z0-9._-]$/.test(c) ? c : '_'))
    .join('')
  if (prefix.startsWith('.')) prefix = `_${prefix.slice(1)}`
  const hash = createHash('sha1').update(name, 'utf8').digest('hex').slice(0, 16)
  return `${prefix}-${hash}.lock`
}

const procs: ReturnType<typeof spawn>[] = []
afterEach(() => {
  // Each script is a process group of its own (flock, sh, sleep): end all of it.
  for (const p of procs.splice(0)) {
    try {
      process.kill(-p.pid!, 'SIGKILL')
    } catch {
      // already gone
    }
  }
})

/** A shell script run by `sh -c`, its stdout collected; `line` waits (bounded) for a line. */
function shell(script: string, env: Record<string, string> = {}) {
  const proc = spawn('sh', ['-c', script], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
    detached: true,
  })
  procs.push(proc)
  let out = ''
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()))
  return {
    proc,
    line: (text: string) => eventually(() => out.split('\n').includes(text), 10_000),
    output: () => out,
  }
}

describe('lock file paths', () => {
  it('lockFilePath and `distlock path` follow the documented mapping', async () => {
    const dir = tempDir('paths')
    await using files = new FileLockProvider({ directory: dir })
    const names = ['orders:42', '.hidden/x', 'a b\tc', '漢字', 'x'.repeat(70), '..', 'Report-2026.01_ok']
    for (const name of names) {
      const expected = join(dir, documentedFileName(name))
      expect(files.lockFilePath(name), name).toBe(expected)
      const res = spawnSync(process.execPath, [CLI, 'path', name, '--file', dir], { encoding: 'utf8' })
      expect(res.status, res.stderr).toBe(0)
      expect(res.stdout).toBe(`${expected}\n`)
    }
    // The README's two examples, literally.
    expect(files.lockFilePath('orders:42')).toBe(join(dir, 'orders_42-0fa4753944a29a4c.lock'))
    expect(files.lockFilePath('x'.repeat(70))).toBe(join(dir, `${'x'.repeat(64)}-${sha1('x'.repeat(70))}.lock`))
    expect(() => files.lockFilePath('')).toThrow(RangeError)
    expect(() => files.lockFilePath('y'.repeat(1025))).toThrow(/1024 bytes/)
  })

  it('the path is the file a lock, a writer and a reader lock; it holds the 8-byte fencing counter', async () => {
    const dir = tempDir('paths-file')
    await using files = new FileLockProvider({ directory: dir })
    const file = files.lockFilePath('job')
    expect(existsSync(file)).toBe(false)
    const h = await files.createLock('job').acquire()
    const bytes = readFileSync(file)
    expect(bytes.length).toBe(8)
    expect(bytes.readBigUInt64LE(0)).toBe(h.fencingToken)
    // flock(1) on the path sees the lock, exclusive and shared.
    expect(spawnSync('flock', ['-n', file, 'true']).status).toBe(1)
    expect(spawnSync('flock', ['-n', '-s', file, 'true']).status).toBe(1)
    await h.release()
    const r = await files.createReaderWriterLock('job').acquireRead()
    expect(spawnSync('flock', ['-n', '-s', file, 'true']).status, 'readers share').toBe(0)
    expect(spawnSync('flock', ['-n', file, 'true']).status, 'a reader excludes a writer').toBe(1)
    await r.release()
    // And the other way: flock(1) holding the path excludes distlock.
    const held = shell(`flock "$F" sh -c 'echo locked; sleep 30'`, { F: file })
    await held.line('locked')
    expect(await files.createLock('job').tryAcquire()).toBeNull()
    expect(await files.createReaderWriterLock('job').tryAcquireRead()).toBeNull()
  })

  it('removeUnusedLockFiles spares a file flock(1) holds, and is unsafe against one that opened before and locks after', async () => {
    const dir = tempDir('paths-clean')
    await using files = new FileLockProvider({ directory: dir })
    const file = files.lockFilePath('shared-with-shell')
    await (await files.createLock('shared-with-shell').acquire()).release()
    // flock(1) holding the lock: the file stays, the lock keeps excluding.
    const holder = shell(`flock "$F" sh -c 'echo locked; read _'`, { F: file })
    await holder.line('locked')
    expect(await files.removeUnusedLockFiles()).toBe(0)
    expect(existsSync(file)).toBe(true)
    holder.proc.stdin!.end('\n')
    await new Promise((r) => holder.proc.on('exit', r))
    // A script that opens the file, then (after the clean-up ran) locks it: as documented, it
    // locks the removed file while distlock locks a new one, and both hold "the" lock.
    const late = shell(`exec 9>>"$F"; echo opened; read _; flock -n 9 && echo locked; sleep 30`, { F: file })
    await late.line('opened')
    expect(await files.removeUnusedLockFiles()).toBe(1)
    late.proc.stdin!.write('go\n')
    await late.line('locked')
    const both = await files.createLock('shared-with-shell').tryAcquire()
    expect(both, 'the documented unsafety: both hold it').not.toBeNull()
    await both!.release()
  })
})

function sha1(s: string): string {
  return createHash('sha1').update(s, 'utf8').digest('hex').slice(0, 16)
}
