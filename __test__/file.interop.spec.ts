// The file backend against lockers nobody here wrote: Python's fcntl.flock (the same flock(2)
// lock, so both ways exclusive; flock(1) is checked in cli.spec.ts) and fcntl.lockf (POSIX record
// locks, which Linux keeps apart from flock(2): the README says they do not exclude, and this
// checks that the sentence stays true).
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'

import { afterAll, describe, expect, it } from 'vitest'

import { FileLockProvider, LockTimeoutError } from 'distlock'

import { tempDir } from './helpers'

if (spawnSync('python3', ['--version']).status !== 0) {
  throw new Error('python3 was not found: the file interop tests run Python (apt-get install python3)')
}

// Locks `path` with fcntl.<how> (flock or lockf) and mode (ex or sh), prints HOLDING (or BUSY when
// LOCK_NB finds it taken), then keeps it until its stdin closes.
const PY = `
import fcntl, os, sys
path, how, mode, nb = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == 'nb'
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
op = fcntl.LOCK_EX if mode == 'ex' else fcntl.LOCK_SH
if nb:
    op |= fcntl.LOCK_NB
try:
    (fcntl.flock if how == 'flock' else fcntl.lockf)(fd, op)
except BlockingIOError:
    print('BUSY', flush=True)
    sys.exit(0)
print('HOLDING', flush=True)
sys.stdin.read()
`

class Py {
  readonly proc: ChildProcessWithoutNullStreams
  out = ''
  constructor(path: string, how: 'flock' | 'lockf', mode: 'ex' | 'sh', nb: boolean) {
    this.proc = spawn('python3', ['-c', PY, path, how, mode, nb ? 'nb' : 'wait'], { stdio: 'pipe' })
    this.proc.stdout.setEncoding('utf8')
    this.proc.stdout.on('data', (d: string) => (this.out += d))
    this.proc.stderr.on('data', (d: Buffer) => (this.out += `[stderr] ${d}`))
  }
  /** HOLDING or BUSY, or null if neither came within `ms`. */
  async said(ms = 10_000): Promise<string | null> {
    const deadline = Date.now() + ms
    while (Date.now() < deadline) {
      const m = /^(HOLDING|BUSY)$/m.exec(this.out)
      if (m) return m[1]!
      if (this.proc.exitCode !== null && !this.out) throw new Error(`python exited at once: ${this.out}`)
      await new Promise((r) => setTimeout(r, 5))
    }
    return null
  }
  stop(): void {
    this.proc.stdin.end()
  }
}

const pys: Py[] = []
const py = (...args: ConstructorParameters<typeof Py>) => {
  const p = new Py(...args)
  pys.push(p)
  return p
}
afterAll(() => {
  for (const p of pys) p.proc.kill('SIGKILL')
})

/** A provider on a fresh directory and the one lock file `name` maps to there. */
async function lockFile(name: string): Promise<{ files: FileLockProvider; path: string }> {
  const dir = tempDir('file-interop')
  const files = new FileLockProvider({ directory: dir })
  await (await files.createLock(name).acquire()).release()
  const [file] = readdirSync(dir).filter((f) => f.endsWith('.lock'))
  return { files, path: join(dir, file!) }
}

describe('file locks and Python', () => {
  it("fcntl.flock excludes distlock's lock on the same file, both ways", async () => {
    const { files, path } = await lockFile('orders:42')
    const lock = files.createLock('orders:42')
    const theirs = py(path, 'flock', 'ex', false)
    expect(await theirs.said()).toBe('HOLDING')
    expect(await lock.tryAcquire()).toBeNull()
    await expect(lock.acquire({ timeoutMs: 150 })).rejects.toBeInstanceOf(LockTimeoutError)
    const waiting = lock.acquire({ timeoutMs: 10_000 })
    theirs.stop()
    const ours = await waiting

    expect(await py(path, 'flock', 'ex', true).said()).toBe('BUSY')
    const blocked = py(path, 'flock', 'ex', false)
    expect(await blocked.said(300)).toBeNull()
    await ours.release()
    expect(await blocked.said()).toBe('HOLDING')
    blocked.stop()
    await files.close()
  })

  it('reader-writer locks are flock shared and exclusive on that file', async () => {
    const { files, path } = await lockFile('doc:7')
    const rw = files.createReaderWriterLock('doc:7')
    const reader = await rw.acquireRead()
    expect(await py(path, 'flock', 'sh', true).said()).toBe('HOLDING')
    expect(await py(path, 'flock', 'ex', true).said()).toBe('BUSY')
    await reader.release()
    const theirs = py(path, 'flock', 'sh', false)
    expect(await theirs.said()).toBe('HOLDING')
    expect(await rw.tryAcquireWrite()).toBeNull()
    const shared = await rw.tryAcquireRead()
    expect(shared).not.toBeNull()
    await shared!.release()
    theirs.stop()
    await files.close()
  })

  it('fcntl.lockf (POSIX record locks) does not exclude distlock: the README says so', async () => {
    const { files, path } = await lockFile('report')
    const theirs = py(path, 'lockf', 'ex', false)
    expect(await theirs.said()).toBe('HOLDING')
    const ours = await files.createLock('report').tryAcquire()
    expect(ours).not.toBeNull()
    await ours!.release()
    theirs.stop()
    await files.close()
  })
})
