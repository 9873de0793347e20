import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync } from 'node:fs'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterAll, beforeAll } from 'vitest'

import type { RedisServer } from '../lab/index.mjs' with { 'resolution-mode': 'import' }

export const FIXTURES = join(__dirname, 'fixtures')
export const ROOT = join(__dirname, '..')

/** A fresh, empty temporary directory. */
export function tempDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `distlock-${tag}-`))
}

/** A child Node process running `fixtures/<script>`, with its output collected line by line. */
export class Child {
  readonly proc: ChildProcess
  readonly lines: string[] = []
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  #waiters: Array<() => void> = []

  constructor(script: string, args: string[], execArgv: string[] = []) {
    this.proc = spawn(process.execPath, [...execArgv, join(FIXTURES, script), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: ROOT,
    })
    let buf = ''
    this.proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString()
      let nl: number
      while ((nl = buf.indexOf('\n')) !== -1) {
        this.lines.push(buf.slice(0, nl))
        buf = buf.slice(nl + 1)
      }
      for (const w of this.#waiters.splice(0)) w()
    })
    let err = ''
    this.proc.stderr!.on('data', (d: Buffer) => (err += d.toString()))
    this.exited = new Promise((resolve) =>
      this.proc.on('exit', (code, signal) => {
        if (err) this.lines.push(`[stderr] ${err}`)
        for (const w of this.#waiters.splice(0)) w()
        resolve({ code, signal })
      }),
    )
  }

  /** Waits (bounded) until a line starting with `prefix` appears; returns it. */
  async line(prefix: string, timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const found = this.lines.find((l) => l.startsWith(prefix))
      if (found !== undefined) return found
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        throw new Error(`child exited before printing ${prefix}: ${this.lines.join('\n')}`)
      }
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for ${prefix}; output: ${this.lines.join('\n')}`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000))
        this.#waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  }

  /** Waits (bounded) for the child to exit. */
  async exit(timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`child did not exit in ${timeoutMs} ms: ${this.lines.join('\n')}`)),
        timeoutMs,
      )
    })
    try {
      return await Promise.race([this.exited, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.proc.kill(signal)
  }
}

/** Polls `check` every `intervalMs` until it returns true, at most `timeoutMs`. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 5_000, intervalMs = 10) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, intervalMs))
  }
  throw new Error(`condition not met within ${timeoutMs} ms`)
}

/** Type-checks `files` with the repo's TypeScript as a user's strict project would; returns tsc's exit status and output. */
export function typecheck(
  files: string[],
  module = 'node16',
  resolution = 'node16',
  { target = 'es2022', lib = 'es2023,esnext.disposable', extra = [] as string[] } = {},
): { status: number | null; output: string } {
  const tsc = createRequire(__filename).resolve('typescript/bin/tsc')
  const res = spawnSync(
    process.execPath,
    [
      tsc,
      '--noEmit',
      '--strict',
      '--module',
      module,
      '--moduleResolution',
      resolution,
      '--target',
      target,
      '--lib',
      lib,
      '--types',
      'node',
      ...extra,
      ...files,
    ],
    { cwd: ROOT, encoding: 'utf8', timeout: 60_000 },
  )
  return { status: res.status, output: res.stdout + res.stderr }
}

/** Resolves once `signal` has aborted: at once if it already has (an abort event fires once). */
export function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve()
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))
}

/**
 * A loopback TCP server that accepts connections and never says a word (a login or a statement
 * sent to it hangs). `await using` closes it and every connection it accepted.
 */
export async function silentServer(): Promise<{ port: number } & AsyncDisposable> {
  const sockets: Socket[] = []
  const server = createServer((s) => void sockets.push(s))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    async [Symbol.asyncDispose]() {
      for (const s of sockets) s.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

/** How long `p` takes to settle, and what it settled with: its value or its error. */
export async function timed<T>(p: Promise<T>): Promise<{ ms: number; value?: T; error?: unknown }> {
  const start = performance.now()
  try {
    const value = await p
    return { ms: performance.now() - start, value }
  } catch (error) {
    return { ms: performance.now() - start, error }
  }
}

/** Runs `fn` and returns what it threw (failing the test if it did not throw). */
export async function thrown(fn: () => unknown): Promise<Error & { code?: string }> {
  try {
    await fn()
  } catch (err) {
    return err as Error & { code?: string }
  }
  throw new Error('expected a throw')
}

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

/**
 * The lab for one spec file, called at its top level: `services` (lab/index.mjs) is loaded
 * before the file's tests and, with `{ redis: true }`, `redis` is a redis-server started for the
 * file; after its tests every server started through the lab is stopped.
 */
export function useLab(options: { redis?: boolean } = {}): {
  readonly services: Services
  readonly redis: RedisServer
} {
  const lab = {} as { services: Services; redis: RedisServer }
  beforeAll(async () => {
    lab.services = await import('../lab/index.mjs')
    if (options.redis) lab.redis = await lab.services.startRedis()
  })
  afterAll(() => lab.services?.stopServices())
  return lab
}
