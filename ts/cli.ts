/**
 * The `distlock` command: `distlock run <name> [options] -- <command…>` is flock(1) for distlock
 * (acquires the lock, runs the command, forwards signals, releases, and exits with the
 * command's exit code); `distlock path <name>` prints a file lock's path.
 *
 * Startup matters for a command wrapped around short jobs: this module loads only `node:os` and
 * `node:path` up front, and the providers (with the native addon) when a command needs them.
 */
import * as dc from 'node:diagnostics_channel'
import * as os from 'node:os'
import * as path from 'node:path'

import type { Handle } from './handle'
import type { LockProvider } from './base-provider'
import { channels, type StallMessage } from './diagnostics'

/** Exit code when the lock is busy (`-n`) or `--timeout` runs out (EX_TEMPFAIL), unless `-E`. */
export const EXIT_TIMEOUT = 75
/** Exit code when the lock is lost while the command runs. */
export const EXIT_LOST = 70
/** Exit code when the backend cannot be reached or fails (EX_UNAVAILABLE). */
export const EXIT_UNAVAILABLE = 69
/** Exit code for bad usage. */
export const EXIT_USAGE = 64

const DEFAULT_DIR = path.join(os.tmpdir(), 'distlock')

const HELP = `Usage: distlock run <name> [backend] [options] -- <command> [args...]
       distlock path <name> [--file <dir>]

run: acquires the lock <name>, runs <command> while holding it, forwards SIGINT,
SIGTERM and SIGHUP to it, releases the lock when it exits, and exits with its
exit code. The command never runs without the lock: on the file backend it
inherits the locked file descriptor (it keeps the lock even if distlock is
killed); on the other backends, on Linux, it is killed (SIGKILL) when distlock
dies. If the lock is lost while the command runs, the command is sent SIGTERM
and distlock exits with code ${EXIT_LOST}.

path: prints the path of the lock file of <name> (creating the lock directory
if missing), for flock(1) and other programs that must exclude distlock's
lockers of <name>.

Backend (one of):
  --file <dir>        OS file locks in <dir> (the default backend; default dir:
                      ${DEFAULT_DIR})
  --postgres <url>    a PostgreSQL advisory lock on the server at <url>
                      (postgres://user:password@host:5432/db?sslmode=verify-full)
  --redis <url>...    Redis: one URL is a server (redis://host:6379, rediss://
                      for TLS), a cluster (redis-cluster://…) or a Sentinel group
                      (redis-sentinel://…); several URLs (or a repeated --redis)
                      are independent servers for RedLock
  --mysql <url>       a MySQL or MariaDB named lock on the server at <url>
                      (mysql://user:password@host:3306/db)
  --etcd <url>...     etcd: the cluster's client endpoints (http://host:2379;
                      several URLs or a repeated --etcd)

Options:
  -s, --shared        take a shared (reader) lock: readers run together, a
                      writer (without -s) excludes them all (not on --mysql)
  -n, --nonblock      do not wait: fail at once if the lock is busy
  -w, --wait <secs>   give up after <secs> seconds (fractions allowed)
  --timeout <time>    give up after <time>: 500ms, 5s, 2m, or a bare number of
                      milliseconds (default: wait forever; while the server
                      cannot be reached, distlock says so on stderr after 5 s,
                      then every 30 s)
  -E, --conflict-exit-code <n>
                      exit with <n> (0-255) when the lock is busy (-n) or the
                      wait runs out (default ${EXIT_TIMEOUT})
  --key-prefix <p>    prefix of the lock's keys (--redis, --etcd; default '')
  -h, --help          show this help
  -V, --version       print distlock's version

The command's environment has DISTLOCK_LOCK_NAME (the lock's name) and
DISTLOCK_FENCING_TOKEN (the grant's fencing token, in decimal: pass it to the
storage the command writes, so that a stale holder's writes can be rejected).

Exit codes: the command's own code, 128+N if it died of signal N,
${EXIT_TIMEOUT} (or -E) busy or timed out, ${EXIT_LOST} lock lost, ${EXIT_UNAVAILABLE} backend unreachable or failing,
${EXIT_USAGE} usage error, 126 command not executable, 127 command not found.
`

class UsageError extends Error {}

type Backend = 'file' | 'postgres' | 'redis' | 'mysql' | 'etcd'

interface RunArgs {
  kind: 'run'
  name: string
  backend: Backend
  directory: string | undefined
  /** The URL(s) of a network backend. */
  urls: string[]
  shared: boolean
  timeoutMs: number | undefined
  /** The flag that set `timeoutMs`, for messages. */
  timeoutFlag: string | undefined
  conflictExitCode: number
  keyPrefix: string | undefined
  command: string[]
}

interface PathArgs {
  kind: 'path'
  name: string
  directory: string | undefined
}

type Parsed = RunArgs | PathArgs | 'help' | 'version'

const BACKEND_FLAGS: Record<string, Backend> = {
  '--file': 'file',
  '--postgres': 'postgres',
  '--redis': 'redis',
  '--mysql': 'mysql',
  '--etcd': 'etcd',
}

const BACKEND_NAMES: Record<Backend, string> = {
  file: 'file',
  postgres: 'PostgreSQL',
  redis: 'Redis',
  mysql: 'MySQL',
  etcd: 'etcd',
}

/** `500ms`, `5s`, `2m` or a bare number of milliseconds, in milliseconds. */
function parseTime(flag: string, raw: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(raw.trim())
  if (!m) {
    throw new UsageError(
      `${flag} must be a non-negative time such as 500ms, 5s, 2m or a number of milliseconds, got ${JSON.stringify(raw)}`,
    )
  }
  const scale = m[2] === 's' ? 1_000 : m[2] === 'm' ? 60_000 : 1
  return Number(m[1]) * scale
}

/** The lock name, checked by the same rule as every provider's (non-empty, ≤ 1 024 bytes). */
function checkName(name: string | undefined): string {
  if (name === undefined) throw new UsageError('missing the lock <name>')
  try {
    loadNative().validateName(name)
  } catch (err) {
    // The core's words, e.g. "name must be at most 1024 bytes…", with the CLI's name for it.
    const message = (loadErrors().toLockError(err) as Error).message
    throw new UsageError(message.replace(/^name /, '<name> '))
  }
  return name
}

function parse(argv: string[]): Parsed {
  if (argv.length === 0) throw new UsageError('missing the command "run" or "path"')
  if (argv[0] === '-h' || argv[0] === '--help' || argv[0] === 'help') return 'help'
  if (argv[0] === '-V' || argv[0] === '--version') return 'version'
  const [sub, ...rest] = argv
  if (sub !== 'run' && sub !== 'path') {
    throw new UsageError(`unknown command ${JSON.stringify(sub)}; expected "run" or "path"`)
  }
  const dash = rest.indexOf('--')
  const opts = dash === -1 ? rest : rest.slice(0, dash)
  const command = dash === -1 ? [] : rest.slice(dash + 1)
  let name: string | undefined
  let directory: string | undefined
  const backends = new Set<string>()
  const urls: string[] = []
  let shared = false
  let timeoutMs: number | undefined
  let timeoutFlag: string | undefined
  let conflictExitCode = EXIT_TIMEOUT
  let keyPrefix: string | undefined
  for (let i = 0; i < opts.length; i++) {
    let arg = opts[i]!
    let inline: string | undefined
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1
    if (eq !== -1) [arg, inline] = [arg.slice(0, eq), arg.slice(eq + 1)]
    const value = (): string => {
      const v = inline ?? opts[++i]
      if (v === undefined || (inline === undefined && v.startsWith('-') && v.length > 1 && !/^-\d/.test(v))) {
        throw new UsageError(`${arg} needs a value`)
      }
      inline = undefined
      return v
    }
    const setWait = (ms: number) => {
      if (timeoutFlag !== undefined && timeoutFlag !== arg) {
        throw new UsageError(`${timeoutFlag} and ${arg} exclude each other`)
      }
      ;[timeoutMs, timeoutFlag] = [ms, arg]
    }
    if (arg === '-h' || arg === '--help') return 'help'
    else if (arg in BACKEND_FLAGS) {
      if (sub === 'path' && arg !== '--file') throw new UsageError(`${arg}: only the file backend has lock files`)
      if (backends.has(arg) && arg !== '--redis' && arg !== '--etcd') throw new UsageError(`${arg} is given twice`)
      backends.add(arg)
      if (arg === '--file') directory = value()
      else urls.push(value())
      // Redis and etcd take several URLs: anything with a scheme, up to the next option or the name.
      if (arg === '--redis' || arg === '--etcd') while (opts[i + 1]?.includes('://')) urls.push(opts[++i]!)
    } else if (sub === 'path' && arg.startsWith('-') && arg !== '-') {
      throw new UsageError(`unknown option ${arg} (path takes only --file)`)
    } else if (arg === '-s' || arg === '--shared') shared = true
    else if (arg === '-n' || arg === '--nonblock') setWait(0)
    else if (arg === '-w' || arg === '--wait') {
      const raw = value()
      const secs = /^\d+(?:\.\d+)?$/.test(raw.trim()) ? Number(raw) : NaN
      if (!Number.isFinite(secs)) {
        throw new UsageError(`${arg} must be a non-negative number of seconds, got ${JSON.stringify(raw)}`)
      }
      setWait(secs * 1_000)
    } else if (arg === '--timeout') setWait(parseTime(arg, value()))
    else if (arg === '-E' || arg === '--conflict-exit-code') {
      const raw = value()
      conflictExitCode = /^\d{1,3}$/.test(raw) ? Number(raw) : NaN
      if (!(conflictExitCode <= 255)) {
        throw new UsageError(`${arg} must be an exit code from 0 to 255, got ${JSON.stringify(raw)}`)
      }
    } else if (arg === '--key-prefix') keyPrefix = value()
    else if (arg.startsWith('-') && arg !== '-') throw new UsageError(`unknown option ${arg}`)
    else if (name === undefined) name = arg
    else throw new UsageError(`unexpected argument ${JSON.stringify(arg)}; put the command after --`)
    if (inline !== undefined) throw new UsageError(`${arg} takes no value`)
  }
  if (sub === 'path') {
    if (dash !== -1) throw new UsageError('path takes no command')
    return { kind: 'path', name: checkName(name), directory }
  }
  if (backends.size > 1) {
    const flags = Object.keys(BACKEND_FLAGS).filter((f) => backends.has(f))
    throw new UsageError(`${flags.join(' and ')} exclude each other`)
  }
  const backend: Backend = BACKEND_FLAGS[[...backends][0] ?? '--file']!
  if (shared && backend === 'mysql') {
    throw new UsageError('--shared: the MySQL backend has no reader-writer locks (its named locks are exclusive)')
  }
  if (keyPrefix !== undefined && backend !== 'redis' && backend !== 'etcd') {
    throw new UsageError(
      `--key-prefix: the ${BACKEND_NAMES[backend]} backend has no key prefix (only --redis and --etcd)`,
    )
  }
  const checked = checkName(name)
  if (command.length === 0) throw new UsageError('missing the command: distlock run <name> -- <command> [args...]')
  return {
    kind: 'run',
    name: checked,
    backend,
    directory,
    urls,
    shared,
    timeoutMs,
    timeoutFlag,
    conflictExitCode,
    keyPrefix,
    command,
  }
}

// The modules a command needs, loaded on first use (see the module's doc).
/* eslint-disable @typescript-eslint/no-require-imports */
const loadNative = (): typeof import('./native').default => require('./native').default
const loadProviders = (): typeof import('./providers') => require('./providers')
const loadErrors = (): typeof import('./errors') => require('./errors')
/* eslint-enable @typescript-eslint/no-require-imports */

/** The package's version, from its package.json (beside `dist/`). */
function version(): string {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('../package.json') as { version: string }).version
}

function say(message: string): void {
  process.stderr.write(`distlock: ${message}\n`)
}

/** Runs the CLI with `argv` (without `node` and the script) and resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  let args: Parsed
  try {
    args = parse(argv)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    say(argv.length === 0 ? `${err.message}\n\n${HELP}` : `${err.message}\n(distlock --help shows the usage)`)
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
  if (args.kind === 'path') {
    // The directory is made as the provider makes it, so that flock(1) can open the path at once.
    const directory = path.resolve(args.directory ?? DEFAULT_DIR)
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    ;(require('node:fs') as typeof import('node:fs')).mkdirSync(directory, { recursive: true })
    process.stdout.write(`${loadNative().fileLockPath(directory, args.name)}\n`)
    return 0
  }
  let provider: LockProvider
  try {
    provider = createProvider(args)
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

function createProvider(args: RunArgs): LockProvider {
  const p = loadProviders()
  const prefix = args.keyPrefix === undefined ? {} : { keyPrefix: args.keyPrefix }
  switch (args.backend) {
    case 'postgres':
      return new p.PostgresLockProvider({ connectionString: args.urls[0]! })
    case 'redis':
      return new p.RedisLockProvider({ urls: args.urls, ...prefix })
    case 'mysql':
      return new p.MySqlLockProvider({ connectionString: args.urls[0]! })
    case 'etcd':
      return new p.EtcdLockProvider({ endpoints: args.urls, ...prefix })
    case 'file':
      return new p.FileLockProvider(args.directory === undefined ? {} : { directory: args.directory })
  }
}

async function runLocked(provider: LockProvider, args: RunArgs): Promise<number> {
  const errors = loadErrors()
  let handle: Handle
  // A wait with no --timeout goes on while the server is down; it says so on stderr.
  const stalled = (m: unknown) => {
    const s = m as StallMessage
    say(
      `still waiting for the lock ${JSON.stringify(args.name)}: the ${s.backend} server has not been reached ` +
        `for ${Math.round(s.waitedMs / 1000)} s (${s.detail}); give --timeout to stop waiting`,
    )
  }
  if (args.timeoutMs === undefined) dc.subscribe(channels.stall, stalled)
  try {
    const options = { timeoutMs: args.timeoutMs }
    handle = args.shared
      ? await provider.createReaderWriterLock(args.name).acquireRead(options)
      : await provider.createLock(args.name).acquire(options)
  } catch (err) {
    if (err instanceof errors.LockTimeoutError) {
      say(
        args.timeoutMs === 0
          ? `the lock ${JSON.stringify(args.name)} is busy`
          : `timed out after ${args.timeoutMs} ms waiting for the lock ${JSON.stringify(args.name)}`,
      )
      return args.conflictExitCode
    }
    if (err instanceof errors.LockBackendError) {
      say(err.message)
      return EXIT_UNAVAILABLE
    }
    // The name was checked before: a bad value here can only be the time (out of range).
    if (err instanceof RangeError && args.timeoutFlag !== undefined) {
      say(`${args.timeoutFlag}: ${err.message}`)
      return EXIT_USAGE
    }
    throw err
  } finally {
    if (args.timeoutMs === undefined) dc.unsubscribe(channels.stall, stalled)
  }
  try {
    const env = {
      ...process.env,
      DISTLOCK_LOCK_NAME: args.name,
      DISTLOCK_FENCING_TOKEN: handle.fencingToken.toString(),
    }
    return await runCommand(args, env as Record<string, string>, handle)
  } finally {
    await handle.release()
  }
}

/** How the command ended: an exit code, or a signal. */
interface Ended {
  code?: number | null
  signal?: number | null
}

/** A started command: signals in, its end out. */
interface Started {
  kill(signal: number): void
  ended: Promise<Ended>
}

const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const

async function runCommand(args: RunArgs, env: Record<string, string>, handle: Handle): Promise<number> {
  const [file, ...rest] = args.command as [string, ...string[]]
  const started = start(file, rest, env, args.backend, handle)
  if ('failed' in started) {
    say(`cannot run ${JSON.stringify(file)}: ${started.message}`)
    return started.failed === 'ENOENT' ? 127 : 126
  }
  let lost = false
  const forward = FORWARDED.map((s) => [s, () => started.kill(os.constants.signals[s])] as const)
  for (const [s, h] of forward) process.on(s, h)
  const onLost = () => {
    lost = true
    const reason = handle.signal.reason
    say(`${reason instanceof Error ? reason.message : 'the lock was lost'}; sending SIGTERM to the command`)
    started.kill(os.constants.signals.SIGTERM)
  }
  handle.signal.addEventListener('abort', onLost, { once: true })
  try {
    const { code, signal } = await started.ended
    return lost ? EXIT_LOST : (code ?? 128 + (signal ?? 0))
  } finally {
    for (const [s, h] of forward) process.off(s, h)
    handle.signal.removeEventListener('abort', onLost)
  }
}

/**
 * Starts the command. On Unix through the native spawn, which ties the command to the lock (see
 * crates/node/src/cli.rs): the file lock's descriptor is inherited; a network lock's command
 * gets a parent-death signal on Linux. Elsewhere (Windows) through `child_process`, with neither.
 */
function start(
  file: string,
  args: string[],
  env: Record<string, string>,
  backend: Backend,
  handle: Handle,
): Started | { failed: string; message: string } {
  const native = loadNative()
  if (typeof native.spawnCommand !== 'function') return startWithNode(file, args, env)
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { nativeHandleOf } = require('./handle') as typeof import('./handle')
  const lockHandle = handle as import('./handle').LockHandle
  const result = native.spawnCommand(
    { file, args, env, dieWithParent: backend !== 'file' },
    backend === 'file' ? nativeHandleOf(lockHandle) : null,
  )
  if (!(result instanceof native.NativeChild)) return { failed: result.code, message: result.message }
  return { kill: (signal) => result.kill(signal), ended: result.wait() }
}

function startWithNode(file: string, args: string[], env: Record<string, string>): Started {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { spawn } = require('node:child_process') as typeof import('node:child_process')
  const child = spawn(file, args, { stdio: 'inherit', env })
  const ended = new Promise<Ended>((resolve) => {
    child.on('error', (err: NodeJS.ErrnoException) => {
      say(`cannot run ${JSON.stringify(file)}: ${err.message}`)
      resolve({ code: err.code === 'ENOENT' ? 127 : 126, signal: null })
    })
    child.on('exit', (code, signal) =>
      resolve({ code, signal: signal === null ? null : (os.constants.signals[signal] ?? 0) }),
    )
  })
  return { kill: (signal) => child.kill(signal), ended }
}
