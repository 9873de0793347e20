// Every code block of docs/troubleshooting.md runs as written (see doc-blocks.ts for the marks),
// and the blocks that show a failure and its fix are run to show both: the process that exits
// with code 13 and the one that does not, the Redis lock released on Ctrl-C, the corporate CA.
import { spawn, type ChildProcess } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { LockBackendError, RedisLockProvider } from 'distlock'

import {
  blockTests,
  command,
  linkProblems,
  markProblems,
  parseBlocks,
  runBlock,
  typecheckBlocks,
  type Backend,
  type Block,
  type Servers,
} from './doc-blocks'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

const FILE = 'docs/troubleshooting.md'
const blocks = parseBlocks(FILE)
const servers: Servers = { postgres: process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres' }
let services: Services
let tlsRedis: { url: string; caFile: string }
const providers: RedisLockProvider[] = []

beforeAll(async () => {
  services = await import('../lab/index.mjs')
  servers.redis = (await services.startRedis()).url
  const tls = await services.startRedis([], { tls: true })
  tlsRedis = { url: tls.url, caFile: tls.caFile! }
})
afterAll(async () => {
  await Promise.all(providers.map((p) => p.close()))
  services.stopServices()
})

/** What the plain `run:` blocks must print: [a line that picks the block, what stdout must match]. */
const EXPECTED: Array<[string, RegExp]> = [
  [
    'await lock.acquire({ timeoutMs: 200 })',
    /^Timed out after 200 ms waiting for memory lock "orders:42"\n\{ held: true, holders: 1, leaseRemainingMs: null, fencingToken: \d+n \}\n$/,
  ],
  ["external: ['distlock']", /^$/],
  ["require('distlock')", /^distlock loads\n$/],
  ['removeUnusedLockFiles()', /^removed 100 unused lock files\n$/],
  ['connectTimeoutMs: 3_000', /^connected and locked\n$/],
]

/** The block marked `run: custom <id>`. */
function custom(id: string): Block {
  const found = blocks.filter((b) => b.mark === `run: custom ${id}`)
  expect(found.length, id).toBe(1)
  return found[0]
}

/** A block running in the background, with its output. */
function start(block: Block, backend: Backend, env: Record<string, string> = {}) {
  const { cmd, args, cwd, env: fullEnv } = command(block, backend, servers, env)
  const child: ChildProcess = spawn(cmd, args, { cwd, env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal })),
  )
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000)
  void exited.then(() => clearTimeout(killer))
  return {
    child,
    exited,
    output: () => ({ stdout, stderr }),
    /** Resolves once stdout has a line starting with `prefix` (bounded: 20 s). */
    async line(prefix: string): Promise<void> {
      for (let i = 0; i < 400; i++) {
        if (stdout.split('\n').some((l) => l.startsWith(prefix))) return
        if (child.exitCode !== null || child.signalCode !== null) break
        await new Promise((r) => setTimeout(r, 50))
      }
      throw new Error(`no line "${prefix}": ${stdout}\n${stderr}`)
    },
  }
}

describe(FILE, () => {
  it('marks every code block with what the tests do with it', () => {
    expect(blocks.length).toBeGreaterThan(8)
    expect(markProblems(blocks)).toEqual([])
  })

  it('links only to files of the repository that exist, and to public URLs', () => {
    expect(linkProblems(FILE)).toEqual([])
  })

  it('runs each custom block in a test of its own', () => {
    const ids = blocks.map((b) => /^run: custom (\S+)$/.exec(b.mark)?.[1]).filter((id) => id !== undefined)
    expect(ids.toSorted()).toEqual(['ctrl-c', 'exit-13', 'exit-13-fixed', 'rediss'])
  })

  it('picks each block it expects output of exactly once', () => {
    for (const [needle] of EXPECTED) expect(blocks.filter((b) => b.code.includes(needle)).length, needle).toBe(1)
  })

  it('type-checks every TypeScript block', () => {
    const { status, output } = typecheckBlocks('troubleshooting', blocks)
    expect(status, output).toBe(0)
  })

  blockTests(blocks, servers, (block) =>
    EXPECTED.filter(([needle]) => block.code.includes(needle)).map(([, re]) => ['stdout', re] as ['stdout', RegExp]),
  )

  it("exit 13: awaiting only a held lock's signal ends the process with code 13", async () => {
    const run = await runBlock(custom('exit-13'), 'file', servers)
    expect(run.stdout).toBe('leading\n')
    expect(run.status, run.stderr).toBe(13)
  })

  it('exit 13, fixed: the process keeps waiting, and steps down on SIGTERM', async () => {
    const p = start(custom('exit-13-fixed'), 'file')
    await p.line('leading')
    // The broken version has exited by now (it ends as soon as the loop runs dry).
    await new Promise((r) => setTimeout(r, 300))
    expect(p.child.exitCode, p.output().stderr).toBeNull()
    p.child.kill('SIGTERM')
    const { code } = await p.exited
    expect(code, p.output().stderr).toBe(0)
    expect(p.output().stdout).toBe('leading\nstepped down\n')
  })

  it('Ctrl-C with releaseOnExit: the key is released and the process still dies of SIGINT', async () => {
    const other = new RedisLockProvider({ urls: servers.redis! })
    providers.push(other)
    const p = start(custom('ctrl-c'), 'redis', { REDIS_URL: servers.redis! })
    await p.line('holding nightly-report')
    expect(await other.createLock('nightly-report').tryAcquire()).toBeNull()
    p.child.kill('SIGINT')
    const { signal } = await p.exited
    expect(signal, p.output().stderr).toBe('SIGINT')
    // Released, not left to its 30 s lease: free at once.
    const handle = await other.createLock('nightly-report').tryAcquire()
    expect(handle).not.toBeNull()
    await handle!.release()
  })

  it('corporate CA: rediss:// works with tls.ca, and fails without it', async () => {
    const run = await runBlock(custom('rediss'), 'redis', servers, {
      env: { REDIS_URL: tlsRedis.url, REDIS_CA_FILE: tlsRedis.caFile },
    })
    expect(run.status, run.stderr).toBe(0)
    expect(run.stdout).toBe('locked over TLS\n')

    const untrusting = new RedisLockProvider({ urls: tlsRedis.url, serverTimeoutMs: 1_000 })
    providers.push(untrusting)
    await expect(untrusting.createLock('orders:42').tryAcquire()).rejects.toBeInstanceOf(LockBackendError)
  })
})
