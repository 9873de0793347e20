// `distlock run` is as safe as flock(1): the command never runs without the lock, even when
// distlock itself is killed with `kill -9`.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { FileLockProvider, PostgresLockProvider } from 'distlock'

import { ROOT, eventually, tempDir } from './helpers'

const CLI = join(ROOT, 'bin', 'distlock.js')
const PG_URL = process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

const started: ChildProcess[] = []
const commandPids: number[] = []
afterEach(() => {
  for (const p of started.splice(0)) p.kill('SIGKILL')
  for (const pid of commandPids.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
})

/** Whether `pid` is a live process (a zombie, which the container's init may never reap, is not). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}

/**
 * `distlock run <args> -- sh -c …`: the command prints its pid, then runs until the file `go`
 * exists (at most 30 s). Not until its stdin ends: Node closes a child's stdin pipe when the
 * child (distlock) exits, which would end the command with it.
 */
async function runHolding(args: string[]) {
  const go = join(tempDir('cli-go'), 'go')
  const wait = 'echo in $$; i=0; while [ ! -e "$GO" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo out'
  const proc = spawn(process.execPath, [CLI, 'run', ...args, '--', 'sh', '-c', wait], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, GO: go },
  })
  started.push(proc)
  let out = ''
  let err = ''
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()))
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()))
  const exited = new Promise<[number | null, string | null]>((r) => proc.on('exit', (c, s) => r([c, s])))
  await eventually(() => /^in \d+$/m.test(out), 15_000).catch(() => {
    throw new Error(`the command did not start: ${err}`)
  })
  const pid = Number(/^in (\d+)$/m.exec(out)![1])
  commandPids.push(pid)
  return { proc, pid, exited, output: () => out, errors: () => err, finish: () => writeFileSync(go, '') }
}

describe('distlock run --file under kill -9', () => {
  it('the command keeps running and keeps the lock until it exits', async () => {
    const dir = tempDir('cli-kill-file')
    await using files = new FileLockProvider({ directory: dir })
    const file = files.lockFilePath('nightly')
    const run = await runHolding(['nightly', '--file', dir])
    run.proc.kill('SIGKILL')
    expect(await run.exited).toEqual([null, 'SIGKILL'])
    expect(alive(run.pid), 'the command outlives distlock').toBe(true)
    // Still locked, for flock(1), for a second distlock run and for the library.
    expect(spawnSync('flock', ['-n', file, 'true']).status).toBe(1)
    const second = spawnSync(process.execPath, [CLI, 'run', 'nightly', '--file', dir, '-n', '--', 'true'], {
      encoding: 'utf8',
    })
    expect(second.status, second.stderr).toBe(75)
    expect(second.stderr).toContain('is busy')
    expect(await files.createLock('nightly').tryAcquire()).toBeNull()
    // The command ends: the lock is free.
    run.finish()
    await eventually(() => !alive(run.pid), 10_000)
    await eventually(() => spawnSync('flock', ['-n', file, 'true']).status === 0, 10_000)
    const h = await files.createLock('nightly').acquire({ timeoutMs: 5_000 })
    await h.release()
  })

  it('a shared (-s) command inherits its reader lock too', async () => {
    const dir = tempDir('cli-kill-shared')
    await using files = new FileLockProvider({ directory: dir })
    const file = files.lockFilePath('report')
    const run = await runHolding(['report', '-s', '--file', dir])
    run.proc.kill('SIGKILL')
    await run.exited
    expect(alive(run.pid)).toBe(true)
    expect(spawnSync('flock', ['-n', file, 'true']).status, 'a writer is excluded').toBe(1)
    expect(spawnSync('flock', ['-n', '-s', file, 'true']).status, 'readers share').toBe(0)
    run.finish()
    await eventually(() => spawnSync('flock', ['-n', file, 'true']).status === 0, 10_000)
  })

  it('a lock lost while the command runs (its file deleted) SIGTERMs the command and exits 70', async () => {
    const dir = tempDir('cli-lost')
    await using files = new FileLockProvider({ directory: dir })
    const run = await runHolding(['doomed', '--file', dir])
    rmSync(files.lockFilePath('doomed'))
    expect(await run.exited).toEqual([70, null])
    expect(run.errors()).toContain('was deleted or replaced while held; sending SIGTERM to the command')
    await eventually(() => !alive(run.pid), 5_000)
    expect(run.output()).not.toContain('out')
  })
})

describe('distlock run --postgres under kill -9', () => {
  it('the command dies with distlock, and the lock is free after', async () => {
    const name = `cli-kill-pg-${process.pid}-${Date.now()}`
    await using pg = new PostgresLockProvider({ connectionString: PG_URL })
    const run = await runHolding([name, '--postgres', PG_URL])
    expect(await pg.createLock(name).tryAcquire()).toBeNull()
    run.proc.kill('SIGKILL')
    await run.exited
    // PR_SET_PDEATHSIG: the kernel kills the command as distlock's main thread dies (the bound
    // is generous for a loaded machine; without the signal it would live until `go` appears).
    await eventually(() => !alive(run.pid), 2_000)
    expect(run.output()).not.toContain('out')
    // The server ends the dead session's advisory lock once it sees the connection closed.
    let h = null
    await eventually(async () => (h = await pg.createLock(name).tryAcquire()) !== null, 10_000)
    await h!.release()
  })
})
