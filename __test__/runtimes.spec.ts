// Bun and Deno, run for real: each loads the built package in a child process and takes a lock
// on every backend (file, memory, PostgreSQL, Redis, MySQL, etcd) — acquire, exclusion, hand-over,
// fencing order, release — on the driver distlock chooses for it. Both come from the npm registry
// as devDependencies (their binaries in per-platform packages); when they are missing the spec
// fails saying how to get them, it never skips. Node runs the same script as the control.
//
// vitest runs this file twice (npm test): the children inherit the run's DISTLOCK_DRIVER, so the
// first run checks the automatic choice and the second `DISTLOCK_DRIVER=tokio`.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { FIXTURES, ROOT, tempDir } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

const SCRIPT = join(FIXTURES, 'runtime-locks.mjs')
const BACKENDS = ['file', 'memory', 'postgres', 'redis', 'mysql', 'etcd']
const FORCED = process.env.DISTLOCK_DRIVER

interface Runtime {
  name: 'node' | 'bun' | 'deno'
  bin: string
  /** Arguments before the script. */
  args: string[]
  /** The driver it gets without DISTLOCK_DRIVER. */
  auto: 'event-loop' | 'runtime'
}

// The binaries themselves (their postinstall scripts put them there), not the .bin shims, which
// are scripts on Windows.
const RUNTIMES: Runtime[] = [
  { name: 'node', bin: process.execPath, args: [], auto: 'event-loop' },
  { name: 'bun', bin: join(ROOT, 'node_modules', 'bun', 'bin', 'bun.exe'), args: [], auto: 'runtime' },
  {
    name: 'deno',
    bin: join(ROOT, 'node_modules', 'deno', process.platform === 'win32' ? 'deno.exe' : 'deno'),
    // What a Deno script needs for the addon: env (the loader and the options read it), sys
    // (napi-rs's loader asks process.report which libc this is), and read + ffi for the package
    // files and the .node binary. The addon's own sockets and files are not Deno's to permit.
    args: ['run', '--allow-env', '--allow-sys', `--allow-read=${ROOT}`, `--allow-ffi=${ROOT}`],
    auto: 'runtime',
  },
]

let services: Services
let childEnv: Record<string, string>

/** Fails (never skips) when a runtime's binary is missing or does not run here. */
function requireBinary(rt: Runtime) {
  if (rt.name === 'node') return
  const hint =
    `${rt.name} is a devDependency of distlock: \`npm install\` (or \`npm ci\`) installs it from the npm ` +
    `registry with its binary (${rt.name === 'bun' ? '@oven/bun-<platform>' : '@deno/<platform>'}), ` +
    `and its postinstall script must run (not --ignore-scripts)`
  if (!existsSync(rt.bin)) throw new Error(`${rt.bin} is missing. ${hint}`)
  const res = spawnSync(rt.bin, ['--version'], { encoding: 'utf8', timeout: 30_000 })
  if (res.status !== 0) {
    throw new Error(`${rt.bin} --version failed (${res.error?.message ?? res.stderr ?? res.status}). ${hint}`)
  }
}

interface Result {
  code: number | null
  signal: NodeJS.Signals | null
  lines: Array<Record<string, unknown>>
  output: string
}

/** Runs the fixture under `rt` (bounded: killed after 90 s) and parses its JSON lines. */
function run(rt: Runtime, backends: string[], env: Record<string, string | undefined> = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(rt.bin, [...rt.args, SCRIPT, 'check', backends.join(',')], {
      cwd: ROOT,
      env: { ...childEnv, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    let err = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (err += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const lines = out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
      resolve({ code, signal, lines, output: `${out}\n[stderr]\n${err}` })
    })
  })
}

const byBackend = (r: Result, backend: string) => r.lines.find((l) => l.backend === backend)

beforeAll(async () => {
  services = await import('../lab/index.mjs')
  const [redis, etcd] = await Promise.all([services.startRedis(), services.startEtcd()])
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v
  childEnv = {
    ...env,
    DISTLOCK_TEST_PG_URL: process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    DISTLOCK_TEST_MYSQL_URL: process.env.DISTLOCK_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test',
    DISTLOCK_RUNTIME_REDIS_URL: redis.url,
    DISTLOCK_RUNTIME_ETCD: etcd.endpoint,
    DISTLOCK_RUNTIME_DIR: tempDir('runtimes'),
    // Nothing reaches outside this machine: no update check (Deno), no crash-report upload (Bun).
    DENO_NO_UPDATE_CHECK: '1',
    DENO_NO_PROMPT: '1',
    NO_COLOR: '1',
    DO_NOT_TRACK: '1',
  }
})

afterAll(() => services?.stopServices())

describe.each(RUNTIMES)('$name', (rt) => {
  const expected = FORCED === 'tokio' ? 'runtime' : rt.auto

  it(`locks on every backend on the ${expected} driver (DISTLOCK_DRIVER=${FORCED ?? 'unset'})`, async () => {
    requireBinary(rt)
    const r = await run(rt, BACKENDS)
    expect({ code: r.code, signal: r.signal }, r.output).toEqual({ code: 0, signal: null })
    expect(String(r.lines[0]?.runtime), r.output).toMatch(new RegExp(`^${rt.name} \\d`))
    for (const backend of BACKENDS) {
      const line = byBackend(r, backend)
      expect(line, `${backend}: ${r.output}`).toMatchObject({ ok: true, driver: expected })
      const tokens = (line!.tokens as string[]).map(BigInt)
      expect(tokens[0]! < tokens[1]! && tokens[1]! < tokens[2]!, `${backend} tokens ${tokens.join(', ')}`).toBe(true)
    }
    expect(r.lines.at(-1), r.output).toEqual({ done: true })
  }, 120_000)

  it('DISTLOCK_DRIVER=event-loop: the event loop where it works, else a RangeError that says why', async () => {
    requireBinary(rt)
    const r = await run(rt, ['memory', 'redis'], { DISTLOCK_DRIVER: 'event-loop' })
    // Never the host aborting the process (Bun's uv_poll_init_socket did: exit 134).
    expect({ code: r.code, signal: r.signal }, r.output).toEqual({ code: 0, signal: null })
    for (const backend of ['memory', 'redis']) {
      const line = byBackend(r, backend)
      if (rt.auto === 'event-loop') {
        expect(line, r.output).toMatchObject({ ok: true, driver: 'event-loop' })
      } else {
        expect(line, r.output).toMatchObject({ ok: false, code: 'ERR_INVALID_ARG_VALUE' })
        const runtimeName = rt.name === 'bun' ? 'Bun' : 'Deno'
        expect(String(line!.error)).toMatch(
          new RegExp(
            `^RangeError: DISTLOCK_DRIVER is "event-loop", but the event-loop driver cannot run here: ${runtimeName} \\d`,
          ),
        )
      }
    }
  }, 120_000)
})

it('a DISTLOCK_DRIVER that names no driver is a RangeError naming the variable and its values', async () => {
  const r = await run(RUNTIMES[0]!, ['memory'], { DISTLOCK_DRIVER: 'Tokio' })
  expect(r.code, r.output).toBe(0)
  expect(byBackend(r, 'memory'), r.output).toMatchObject({
    ok: false,
    code: 'ERR_INVALID_ARG_VALUE',
    error: 'RangeError: DISTLOCK_DRIVER is "Tokio": it takes "event-loop", "tokio" or "auto" (the same as unset)',
  })
})
