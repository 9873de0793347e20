/**
 * `distlock run <name> [options] -- <command…>`: flock(1) for distlock. Acquires the lock, runs
 * the command, forwards signals, releases, and exits with the command's exit code.
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { LockBackendError, LockTimeoutError } from './errors'
import {
  EtcdLockProvider,
  FileLockProvider,
  MySqlLockProvider,
  PostgresLockProvider,
  RedisLockProvider,
  type LockProvider,
} from './providers'

/** Exit code when `--timeout` runs out before the lock is granted (EX_TEMPFAIL). */
export const EXIT_TIMEOUT = 75
/** Exit code when the lock is lost while the command runs. */
export const EXIT_LOST = 70
/** Exit code when the backend cannot be reached or fails (EX_UNAVAILABLE). */
export const EXIT_UNAVAILABLE = 69
/** Exit code for bad usage. */
export const EXIT_USAGE = 64

const HELP = `Usage: distlock run <name> [options] -- <command> [args...]

Acquires the distributed lock <name>, runs <command> while holding it, forwards
SIGINT, SIGTERM and SIGHUP to it, releases the lock when it exits, and exits with
its exit code. If the lock is lost while the command runs, the command is sent
SIGTERM and distlock exits with code ${EXIT_LOST}.

Options:
  --file <dir>      lock with OS file locks in <dir> (the default backend;
                    default dir: ${path.join(os.tmpdir(), 'distlock')})
  --postgres <url>  lock with a PostgreSQL advisory lock on the server at <url>
                    (postgres://user:password@host:5432/db?sslmode=verify-full)
  --redis <url>...  lock with Redis: one URL is a server (redis://host:6379,
                    rediss:// for TLS), a cluster (redis-cluster://…) or a
                    Sentinel group (redis-sentinel://…); several URLs (or a
                    repeated --redis) are independent servers for RedLock
  --mysql <url>     lock with a MySQL or MariaDB named lock on the server at
                    <url> (mysql://user:password@host:3306/db)
  --etcd <url>...   lock with etcd: the cluster's client endpoints
                    (http://host:2379; several URLs or a repeated --etcd)
  --timeout <ms>    give up after <ms> milliseconds (default: wait forever);
                    exits with code ${EXIT_TIMEOUT} on timeout
  -h, --help        show this help
  -V, --version     print distlock's version

The command's environment has DISTLOCK_LOCK_NAME (the lock's name) and
DISTLOCK_FENCING_TOKEN (the grant's fencing token, in decimal: pass it to the
storage the command writes, so that a stale holder's writes can be rejected).

Exit codes: the command's own code, 128+N if it died of signal N,
${EXIT_TIMEOUT} timeout, ${EXIT_LOST} lock lost, ${EXIT_UNAVAILABLE} backend unreachable or failing, ${EXIT_USAGE} usage error, 127 command not found.
`

class UsageError extends Error {}

interface RunArgs {
  name: string
  directory: string | undefined
  postgres: string | undefined
  redis: string[]
  mysql: string | undefined
  etcd: string[]
  timeoutMs: number | undefined
  command: string[]
}

function parse(argv: string[]): RunArgs | 'help' | 'version' {
  if (argv.length === 0) throw new UsageError('missing the command "run"')
  if (argv[0] === '-h' || argv[0] === '--help' || argv[0] === 'help') return 'help'
  if (argv[0] === '-V' || argv[0] === '--version') return 'version'
  const [sub, ...rest] = argv
  if (sub !== 'run') throw new UsageError(`unknown command ${JSON.stringify(sub)}; expected "run"`)
  const dash = rest.indexOf('--')
  const opts = dash === -1 ? rest : rest.slice(0, dash)
  const command = dash === -1 ? [] : rest.slice(dash + 1)
  let name: string | undefined
  let directory: string | undefined
  let postgres: string | undefined
  const redis: string[] = []
  let mysql: string | undefined
  const etcd: string[] = []
  let timeoutMs: number | undefined
  for (let i = 0; i < opts.length; i++) {
    const arg = opts[i]
    const value = (): string => {
      const v = opts[++i]
      if (v === undefined) throw new UsageError(`${arg} needs a value`)
      return v
    }
    if (arg === '-h' || arg === '--help') return 'help'
    else if (arg === '--file') directory = value()
    else if (arg === '--postgres') postgres = value()
    else if (arg === '--mysql') mysql = value()
    else if (arg === '--redis' || arg === '--etcd') {
      const urls = arg === '--redis' ? redis : etcd
      urls.push(value())
      // More URLs may follow: anything with a scheme, up to the next option or the name.
      while (opts[i + 1]?.includes('://')) urls.push(opts[++i]!)
    } else if (arg === '--timeout') {
      const raw = value()
      timeoutMs = Number(raw)
      if (raw.trim() === '' || !Number.isFinite(timeoutMs) || timeoutMs < 0) {
        throw new UsageError(`--timeout must be a non-negative number of milliseconds, got ${JSON.stringify(raw)}`)
      }
    } else if (arg.startsWith('-')) throw new UsageError(`unknown option ${arg}`)
    else if (name === undefined) name = arg
    else throw new UsageError(`unexpected argument ${JSON.stringify(arg)}; put the command after --`)
  }
  if (name === undefined || name === '') throw new UsageError('missing the lock <name>')
  const backends = [
    directory !== undefined && '--file',
    postgres !== undefined && '--postgres',
    redis.length > 0 && '--redis',
    mysql !== undefined && '--mysql',
    etcd.length > 0 && '--etcd',
  ]
  const chosen = backends.filter(Boolean)
  if (chosen.length > 1) throw new UsageError(`${chosen.join(' and ')} exclude each other`)
  if (command.length === 0) throw new UsageError('missing the command: distlock run <name> -- <command> [args...]')
  return { name, directory, postgres, redis, mysql, etcd, timeoutMs, command }
}

/** The package's version, from its package.json (beside `dist/`). */
function version(): string {
  const pkg = JSON.parse(readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }
  return pkg.version
}

function say(message: string): void {
  process.stderr.write(`distlock: ${message}\n`)
}

/** Runs the CLI with `argv` (without `node` and the script) and resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  let args: RunArgs | 'help' | 'version'
  try {
    args = parse(argv)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    say(`${err.message}\n\n${HELP}`)
    return EXIT_USAGE
  }
  if (args === 'help') {
    process.stdout.write(HELP)
    return 0
  }
  if (args === 'version') {
    process.stdout.write(`${version()}\n`)
    return 0
  }
  let provider: LockProvider
  try {
    provider =
      args.postgres !== undefined
        ? new PostgresLockProvider({ connectionString: args.postgres })
        : args.redis.length > 0
          ? new RedisLockProvider({ urls: args.redis })
          : args.mysql !== undefined
            ? new MySqlLockProvider({ connectionString: args.mysql })
            : args.etcd.length > 0
              ? new EtcdLockProvider({ endpoints: args.etcd })
              : new FileLockProvider(args.directory === undefined ? {} : { directory: args.directory })
  } catch (err) {
    say((err as Error).message)
    return EXIT_USAGE
  }
  try {
    return await runLocked(provider, args)
  } finally {
    await provider.close()
  }
}

async function runLocked(provider: LockProvider, args: RunArgs): Promise<number> {
  let handle
  try {
    handle = await provider.createLock(args.name).acquire({ timeoutMs: args.timeoutMs })
  } catch (err) {
    if (err instanceof LockTimeoutError) {
      say(`timed out after ${args.timeoutMs} ms waiting for the lock ${JSON.stringify(args.name)}`)
      return EXIT_TIMEOUT
    }
    if (err instanceof LockBackendError) {
      say(err.message)
      return EXIT_UNAVAILABLE
    }
    throw err
  }
  try {
    const env = {
      ...process.env,
      DISTLOCK_LOCK_NAME: args.name,
      DISTLOCK_FENCING_TOKEN: handle.fencingToken.toString(),
    }
    return await runCommand(args.command, env, handle.signal)
  } finally {
    await handle.release()
  }
}

function runCommand(command: string[], env: NodeJS.ProcessEnv, lost: AbortSignal): Promise<number> {
  return new Promise((resolve) => {
    const [file, ...rest] = command
    const child = spawn(file, rest, { stdio: 'inherit', env })
    let lostReason: unknown
    const forward = (signal: NodeJS.Signals) => () => child.kill(signal)
    const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((s) => [s, forward(s)] as const)
    for (const [s, h] of handlers) process.on(s, h)
    const onLost = () => {
      lostReason = lost.reason
      say(`${lost.reason instanceof Error ? lost.reason.message : 'the lock was lost'}; sending SIGTERM to the command`)
      child.kill('SIGTERM')
    }
    lost.addEventListener('abort', onLost, { once: true })
    const done = (code: number) => {
      for (const [s, h] of handlers) process.off(s, h)
      lost.removeEventListener('abort', onLost)
      resolve(lostReason === undefined ? code : EXIT_LOST)
    }
    child.on('error', (err: NodeJS.ErrnoException) => {
      say(`cannot run ${JSON.stringify(file)}: ${err.message}`)
      done(err.code === 'ENOENT' ? 127 : 126)
    })
    child.on('exit', (code, signal) => {
      done(code ?? 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0))
    })
  })
}
