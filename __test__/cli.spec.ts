import { spawn, spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  EtcdLockProvider,
  FileLockProvider,
  PostgresLockProvider,
  RedisLockProvider,
  type LockProvider,
} from 'distlock'

import { parseBlocks } from './doc-blocks'
import { ROOT, eventually, tempDir } from './helpers'

const CLI = join(ROOT, 'bin', 'distlock.js')

function cli(args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 20_000 })
}

/** Runs `distlock run <name> <backend...> -- node …` and checks that it holds `name` while the command runs. */
async function holdsWhileRunning(p: LockProvider, name: string, backend: string[]) {
  const command = [process.execPath, '-e', 'console.log("in"); setTimeout(() => {}, 60000)']
  const child = spawn(process.execPath, [CLI, 'run', name, ...backend, '--', ...command], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  await eventually(() => out.includes('in'), 10_000)
  expect(await p.createLock(name).tryAcquire()).toBeNull()
  child.kill('SIGTERM')
  await new Promise((r) => child.on('exit', r))
  const h = await p.createLock(name).acquire({ timeoutMs: 5000 })
  await h.release()
}

describe('distlock run', () => {
  it('runs the command under the lock and exits with its code', async () => {
    const dir = tempDir('cli')
    const res = cli([
      'run',
      'demo',
      '--file',
      dir,
      '--',
      process.execPath,
      '-e',
      'console.log("inside"); process.exit(7)',
    ])
    expect(res.stdout).toBe('inside\n')
    expect(res.status).toBe(7)
    await using p = new FileLockProvider({ directory: dir })
    const h = await p.createLock('demo').tryAcquire()
    expect(h, 'released after the command').not.toBeNull()
    await h!.release()
  })

  it('holds the lock while the command runs', async () => {
    const dir = tempDir('cli-hold')
    await using p = new FileLockProvider({ directory: dir })
    const lock = p.createLock('job')
    const child = spawn(
      process.execPath,
      [
        CLI,
        'run',
        'job',
        '--file',
        dir,
        '--',
        process.execPath,
        '-e',
        'console.log("started"); setTimeout(() => {}, 20000)',
      ],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    )
    try {
      let out = ''
      child.stdout.on('data', (d) => (out += d))
      await eventually(() => out.includes('started'), 10_000)
      expect(await lock.tryAcquire()).toBeNull()
      const exited = new Promise<[number | null, string | null]>((r) => child.on('exit', (c, s) => r([c, s])))
      child.kill('SIGTERM') // forwarded to the command, which dies of it
      expect(await exited).toEqual([128 + 15, null])
      const h = await lock.acquire({ timeoutMs: 5_000 })
      await h.release()
    } finally {
      child.kill('SIGKILL')
    }
  })

  it('forwards signals the command handles itself', async () => {
    const dir = tempDir('cli-sig')
    const child = spawn(
      process.execPath,
      [
        CLI,
        'run',
        'sig',
        '--file',
        dir,
        '--',
        process.execPath,
        '-e',
        'process.on("SIGINT", () => process.exit(42)); console.log("ready"); setTimeout(() => {}, 20000)',
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    )
    try {
      let out = ''
      child.stdout.on('data', (d) => (out += d))
      await eventually(() => out.includes('ready'), 10_000)
      const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)))
      child.kill('SIGINT')
      expect(await exited).toBe(42)
    } finally {
      child.kill('SIGKILL')
    }
  })

  it('exits 75 when --timeout runs out', async () => {
    const dir = tempDir('cli-timeout')
    await using p = new FileLockProvider({ directory: dir })
    const h = await p.createLock('busy').acquire()
    const res = cli(['run', 'busy', '--file', dir, '--timeout', '50', '--', process.execPath, '-e', 'process.exit(0)'])
    expect(res.status).toBe(75)
    expect(res.stderr).toContain('timed out after 50 ms waiting for the lock "busy"')
    await h.release()
  })

  it('prints help and its version; no arguments and usage errors exit 64 with a message', () => {
    const help = cli(['--help'])
    expect(help.status).toBe(0)
    expect(help.stdout).toContain('Usage: distlock run <name>')
    const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }
    for (const flag of ['--version', '-V']) {
      const res = cli([flag])
      expect(res.status).toBe(0)
      expect(res.stdout).toBe(`${version}\n`)
    }
    const bare = cli([])
    expect(bare.status).toBe(64)
    expect(bare.stderr).toContain('missing the command "run"')
    expect(bare.stderr).toContain('Usage: distlock run <name>')
    for (const [args, message] of [
      [['run', 'x'], 'missing the command'],
      [['run', '--', 'true'], 'missing the lock <name>'],
      [['run', 'x', '--timeout', 'soon', '--', 'true'], '--timeout must be a non-negative time'],
      [['run', 'x', '--bogus', '--', 'true'], 'unknown option --bogus'],
      [['lock', 'x'], 'unknown command "lock"'],
    ] as const) {
      const res = cli([...args])
      expect(res.status, args.join(' ')).toBe(64)
      expect(res.stderr).toContain(message)
    }
  })

  it('lists every backend and option in its help', () => {
    const help = cli(['--help']).stdout
    for (const flag of [
      '--file <dir>',
      '--postgres <url>',
      '--redis <url>...',
      '--mysql <url>',
      '--etcd <url>...',
      '-s, --shared',
      '-n, --nonblock',
      '-w, --wait <secs>',
      '--timeout <time>',
      '-E, --conflict-exit-code <n>',
      '--key-prefix <p>',
      'distlock path <name> [--file <dir>]',
    ]) {
      expect(help, flag).toContain(flag)
    }
  })

  it('every usage error names its flag and exits 64', () => {
    const dir = tempDir('cli-usage')
    for (const [args, message] of [
      [['--timeout', 'soon'], '--timeout must be a non-negative time'],
      [['--timeout', '-5'], '--timeout must be a non-negative time'],
      [['--timeout'], '--timeout needs a value'],
      [['--timeout=5h'], '--timeout must be a non-negative time'],
      [['-w', 'x'], '-w must be a non-negative number of seconds'],
      [['--wait', '1s'], '--wait must be a non-negative number of seconds'],
      [['-w', '99999999'], '-w: '],
      [['-E', '256', '-n'], '-E must be an exit code from 0 to 255'],
      [['--conflict-exit-code', 'x'], '--conflict-exit-code must be an exit code'],
      [['-n', '-w', '1'], '-n and -w exclude each other'],
      [['--timeout', '1s', '-n'], '--timeout and -n exclude each other'],
      [['--key-prefix', 'p:'], '--key-prefix: the file backend has no key prefix'],
      [['--file'], '--file needs a value'],
      [['--nonblock=1'], '--nonblock takes no value'],
      [['--file', dir, '--file', dir], '--file is given twice'],
    ] as const) {
      const res = cli(['run', 'x', ...(args[0] === '--file' ? [] : ['--file', dir]), ...args, '--', 'true'])
      expect(res.status, args.join(' ')).toBe(64)
      expect(res.stderr, args.join(' ')).toContain(message)
    }
    const pg = cli(['run', 'x', '--postgres', 'postgres://u@h/db', '--key-prefix', 'p', '--', 'true'])
    expect(pg.stderr).toContain('--key-prefix: the PostgreSQL backend has no key prefix')
    const mysql = cli(['run', 'x', '--mysql', 'mysql://root@127.0.0.1/test', '-s', '--', 'true'])
    expect(mysql.status).toBe(64)
    expect(mysql.stderr).toContain('--shared: the MySQL backend has no reader-writer locks')
    const long = cli(['run', 'é'.repeat(513), '--file', dir, '--', 'true'])
    expect(long.status, 'a name over 1 024 bytes is a usage error').toBe(64)
    expect(long.stderr).toContain('<name> must be at most 1024 bytes in UTF-8, got 1026 bytes')
    const empty = cli(['run', '', '--file', dir, '--', 'true'])
    expect(empty.status).toBe(64)
    expect(empty.stderr).toContain('<name> must be a non-empty string')
    for (const args of [['path'], ['path', 'x', '--postgres', 'postgres://u@h/db'], ['path', 'x', '-s']]) {
      expect(cli(args).status, args.join(' ')).toBe(64)
    }
    expect(cli(['path', 'x', '--postgres', 'postgres://u@h/db']).stderr).toContain('--postgres: only the file backend')
  })

  it('-n and -E: a busy lock exits with the conflict code at once; -w and --timeout take seconds and units', async () => {
    const dir = tempDir('cli-conflict')
    await using p = new FileLockProvider({ directory: dir })
    const h = await p.createLock('busy').acquire()
    const run = (...args: string[]) => cli(['run', 'busy', '--file', dir, ...args, '--', 'true'])
    const n = run('-n')
    expect(n.status).toBe(75)
    expect(n.stderr).toContain('the lock "busy" is busy')
    expect(run('--nonblock', '-E', '3').status).toBe(3)
    expect(run('-E', '0', '--timeout', '0').status).toBe(0)
    const w = run('-w', '0.1', '--conflict-exit-code=9')
    expect(w.status).toBe(9)
    expect(w.stderr).toContain('timed out after 100 ms')
    for (const [time, ms] of [
      ['50ms', 50],
      ['0.2s', 200],
      ['0.001m', 60],
      ['40', 40],
    ] as const) {
      const t = run('--timeout', time, '-E', '5')
      expect(t.status, time).toBe(5)
      expect(t.stderr, time).toContain(`timed out after ${ms} ms`)
    }
    await h.release()
    expect(run('-n', '-E', '3').status, 'free: the command runs').toBe(0)
  })

  it('-s takes a reader lock: readers run together, a writer waits for them', async () => {
    const dir = tempDir('cli-shared')
    await using p = new FileLockProvider({ directory: dir })
    const reader = spawn(
      process.execPath,
      [
        CLI,
        'run',
        'doc',
        '--file',
        dir,
        '--shared',
        '--',
        process.execPath,
        '-e',
        'console.log("in"); setTimeout(() => {}, 30000)',
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    )
    try {
      let out = ''
      reader.stdout.on('data', (d) => (out += d))
      await eventually(() => out.includes('in'), 10_000)
      const second = cli(['run', 'doc', '--file', dir, '-s', '-n', '--', process.execPath, '-e', 'process.exit(4)'])
      expect(second.status, 'a second reader runs beside the first').toBe(4)
      expect(cli(['run', 'doc', '--file', dir, '-n', '--', 'true']).status, 'a writer is excluded').toBe(75)
      expect(await p.createReaderWriterLock('doc').tryAcquireWrite()).toBeNull()
      const r = await p.createReaderWriterLock('doc').tryAcquireRead()
      expect(r).not.toBeNull()
      await r!.release()
    } finally {
      // SIGTERM, forwarded to the command: a SIGKILL would leave it running with the lock.
      reader.kill('SIGTERM')
      await new Promise((r) => reader.on('exit', r))
    }
  })

  it('gives the command the lock name and the fencing token, which rises per grant', () => {
    const dir = tempDir('cli-env')
    const print = 'console.log(JSON.stringify([process.env.DISTLOCK_LOCK_NAME, process.env.DISTLOCK_FENCING_TOKEN]))'
    const tokens = [1, 2].map(() => {
      const res = cli(['run', 'env name', '--file', dir, '--', process.execPath, '-e', print])
      expect(res.status, res.stderr).toBe(0)
      const [name, token] = JSON.parse(res.stdout) as [string, string]
      expect(name).toBe('env name')
      expect(token).toMatch(/^\d+$/)
      return BigInt(token)
    })
    expect(tokens[1]! > tokens[0]!).toBe(true)
  })

  it('exits 127 when the command does not exist', () => {
    const res = cli(['run', 'nx', '--file', tempDir('cli-nx'), '--', 'distlock-no-such-command'])
    expect(res.status).toBe(127)
    expect(res.stderr).toContain('cannot run "distlock-no-such-command"')
  })
})

describe('distlock run --postgres', () => {
  const url = process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

  it('holds a PostgreSQL advisory lock while the command runs, then releases it', async () => {
    await using p = new PostgresLockProvider({ connectionString: url })
    await holdsWhileRunning(p, `cli-pg-${process.pid}-${Date.now()}`, ['--postgres', url])
  })

  it("the README's fenced psql recipe writes under the lock, and a stale token writes nothing", async () => {
    const block = parseBlocks('README.md').find((b) => b.lang === 'sh' && b.code.includes('fenced-report.sh'))
    expect(block, 'the recipe in the README').toBeDefined()
    const dir = tempDir('cli-fenced')
    const env = { ...process.env, DATABASE_URL: url }
    const script = block!.code.replaceAll('npx distlock', `"${process.execPath}" "${CLI}"`)
    const run = spawnSync('sh', ['-e', '-c', script], { cwd: dir, env, encoding: 'utf8', timeout: 20_000 })
    expect(run.status, run.stderr).toBe(0)
    const psql = (sql: string) =>
      spawnSync('psql', [url, '-Atc', sql], { encoding: 'utf8', timeout: 10_000 }).stdout.trim()
    const written = psql('SELECT token FROM nightly_report WHERE id = 1')
    expect(BigInt(written)).toBeGreaterThan(0n)
    // A holder whose token is older than the fence's: psql stops, says why, and writes nothing.
    const stale = spawnSync('sh', ['fenced-report.sh'], {
      cwd: dir,
      env: { ...env, DISTLOCK_FENCING_TOKEN: '1' },
      encoding: 'utf8',
      timeout: 20_000,
    })
    expect(stale.status).toBe(3)
    expect(stale.stderr).toContain('stale fencing token 1: a later holder wrote with')
    expect(BigInt(psql('SELECT token FROM nightly_report WHERE id = 1'))).toBeGreaterThanOrEqual(BigInt(written))
    expect(psql('SELECT token FROM nightly_report WHERE id = 1')).not.toBe('1')
  })

  it('a bad connection string is a usage error that names it', () => {
    const res = cli(['run', 'x', '--postgres', 'postgres://u@h:notaport/db', '--', 'true'])
    expect(res.status).toBe(64)
    expect(res.stderr).toContain('connectionString')
  })

  it('an unreachable server fails with a backend error, not a timeout', () => {
    const res = cli([
      'run',
      'x',
      '--postgres',
      'postgres://postgres@127.0.0.1:9/postgres',
      '--timeout',
      '1000',
      '--',
      'true',
    ])
    expect(res.status).toBe(69)
    expect(res.stderr).toContain('127.0.0.1:9')
  })
})

describe('distlock run --redis', () => {
  let urls: string[] = []
  let services: typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
  beforeAll(async () => {
    services = await import('../lab/index.mjs')
    urls = await Promise.all([0, 1, 2].map(async () => (await services.startRedis()).url))
  })
  afterAll(() => services.stopServices())

  it('holds a RedLock lock over three servers while the command runs, then releases it', async () => {
    await using p = new RedisLockProvider({ urls })
    await holdsWhileRunning(p, `cli-redis-${process.pid}-${Date.now()}`, ['--redis', ...urls])
  })

  it('--key-prefix puts the lock under the prefix', async () => {
    const name = `cli-prefix-${process.pid}-${Date.now()}`
    await using prefixed = new RedisLockProvider({ urls: urls[0]!, keyPrefix: 'app:' })
    await using bare = new RedisLockProvider({ urls: urls[0]! })
    const child = spawn(
      process.execPath,
      [
        CLI,
        'run',
        name,
        '--redis',
        urls[0]!,
        '--key-prefix',
        'app:',
        '--',
        process.execPath,
        '-e',
        'console.log("in"); setTimeout(() => {}, 30000)',
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    )
    try {
      let out = ''
      child.stdout.on('data', (d: Buffer) => (out += d.toString()))
      await eventually(() => out.includes('in'), 10_000)
      expect(await prefixed.createLock(name).tryAcquire(), 'held under app:').toBeNull()
      const other = await bare.createLock(name).tryAcquire()
      expect(other, 'not under the bare name').not.toBeNull()
      await other!.release()
    } finally {
      child.kill('SIGTERM')
      await new Promise((r) => child.on('exit', r))
    }
  })

  it('a malformed URL and a second backend are usage errors', () => {
    const bad = cli(['run', 'x', '--redis', 'http://nope', '--', 'true'])
    expect(bad.status).toBe(64)
    expect(bad.stderr).toContain('urls [0] is not a valid Redis URL')
    const both = cli(['run', 'x', '--redis', urls[0]!, '--file', tempDir('cli-both'), '--', 'true'])
    expect(both.status).toBe(64)
    expect(both.stderr).toContain('--file and --redis exclude each other')
  })

  it('an unreachable server fails with a backend error', () => {
    const res = cli(['run', 'x', '--redis', 'redis://127.0.0.1:9', '--timeout', '1000', '--', 'true'])
    expect(res.status).toBe(69)
    expect(res.stderr).toContain('127.0.0.1:9')
  })
})

describe('distlock run --etcd', () => {
  let services: typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
  let etcd: { endpoint: string; stop(): unknown }
  beforeAll(async () => {
    services = await import('../lab/index.mjs')
    etcd = await services.startEtcd()
  })
  afterAll(() => services.stopServices())

  it('--key-prefix puts the lock under the prefix', async () => {
    const name = `cli-etcd-prefix-${process.pid}-${Date.now()}`
    await using prefixed = new EtcdLockProvider({ endpoints: etcd.endpoint, keyPrefix: 'app/' })
    await using bare = new EtcdLockProvider({ endpoints: etcd.endpoint })
    const command = [process.execPath, '-e', 'console.log("in"); setTimeout(() => {}, 30000)']
    const child = spawn(
      process.execPath,
      [CLI, 'run', name, '--etcd', etcd.endpoint, '--key-prefix=app/', '--', ...command],
      {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    )
    try {
      let out = ''
      child.stdout.on('data', (d: Buffer) => (out += d.toString()))
      await eventually(() => out.includes('in'), 15_000)
      expect(await prefixed.createLock(name).tryAcquire(), 'held under app/').toBeNull()
      const other = await bare.createLock(name).tryAcquire()
      expect(other, 'not under the default prefix').not.toBeNull()
      await other!.release()
    } finally {
      child.kill('SIGTERM')
      await new Promise((r) => child.on('exit', r))
    }
  })
})

describe('distlock run with no --timeout against a server that is down', () => {
  it('keeps waiting and says on stderr what it waits for, and never runs the command', async () => {
    const child = spawn(
      process.execPath,
      [CLI, 'run', 'cli-stall', '--etcd', 'http://127.0.0.1:9', '--', process.execPath, '-e', 'console.log("ran")'],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    )
    let out = ''
    let err = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (err += d.toString()))
    const started = Date.now()
    try {
      await eventually(() => err.includes('still waiting'), 25_000)
      // Not before the first 5 s of trouble.
      expect(Date.now() - started).toBeGreaterThanOrEqual(5_000)
      expect(err).toContain('still waiting for the lock "cli-stall": the etcd server has not been reached for')
      expect(err).toContain('Connection refused')
      expect(err).toContain('give --timeout to stop waiting')
      expect(child.exitCode, 'still waiting').toBeNull()
      expect(out).toBe('')
    } finally {
      child.kill('SIGKILL')
      await new Promise((r) => child.on('exit', r))
    }
  }, 40_000)
})
