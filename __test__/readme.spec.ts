// Every code block of README.md runs as written (or, where it needs a remote host, type-checks):
// the file and memory blocks directly, the PostgreSQL ones against the test server, the Redis
// ones against a redis-server this spec starts. Each block carries a mark saying which (see
// doc-blocks.ts); a block without one fails the spec.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { blockTests, markOf, markProblems, parseBlocks, runBlock, typecheckBlocks, linkProblems } from './doc-blocks'
import type { Block, Servers } from './doc-blocks'
import { ROOT } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

const blocks = parseBlocks('README.md')
const servers: Servers = { postgres: process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres' }
let services: Services | undefined

beforeAll(async () => {
  if (blocks.some((b) => b.mark === 'run: redis')) {
    services = await import('../lab/index.mjs')
    servers.redis = (await services.startRedis()).url
  }
})
afterAll(() => services?.stopServices())

/**
 * What some blocks must print, beyond exiting 0: [a line of the block that picks it, the stream,
 * what the output must match]. Each needle must pick exactly one block.
 */
const EXPECTED: Array<[string, 'stdout' | 'stderr', RegExp]> = [
  ['// quickstart.mjs', 'stdout', /^holding orders:42 with fencing token \d+n\ndone under the lock\n$/],
  ['await using locks = new FileLockProvider() // closed at the end of the module', 'stdout', /^\d+n\n$/],
  ['function lockProvider()', 'stdout', /^file lock nightly-report, token \d+\n$/],
  [
    'const three = await gpus.acquire({ permits: 3 })',
    'stdout',
    /^lock orders:42 \d+n\nwriter while read: null\nwriting doc:7\npermits held: 1 3 null\n$/,
  ],
  [
    'console.log(await lock.tryAcquire({ timeoutMs: 50 }))',
    'stdout',
    /^null\nnull\ntrue ERR_LOCK_TIMEOUT\ntrue ABORT_ERR TimeoutError\n$/,
  ],
  ["const lock = locks.createLock('invoice:7')", 'stdout', /^held true\n42\n$/],
  ['const storage = {', 'stdout', /^stale fencing token \d+\n$/],
  ["for (const step of ['scan', 'merge', 'write'])", 'stdout', /^scan\nmerge\nwrite\nlost: ERR_LOCK_LOST\n$/],
  ["directory: path.join(os.tmpdir(), 'myapp')", 'stdout', /^\/.*\/myapp\n$/],
  ["console.log('postgres token'", 'stdout', /^postgres token \d+n\n$/],
  ["console.log('redis token'", 'stdout', /^redis token \d+n lease left \d+(\.\d+)?\n$/],
  ['removeUnusedFenceKeys()', 'stdout', /^lock files removed: \d+\nfence keys removed: \d+\n$/],
  [
    'if (!(err instanceof LockError)) throw err',
    'stdout',
    /^ERR_LOCK_TIMEOUT Timed out after 10 ms waiting for memory lock "orders:42"\nERR_INVALID_ARG_VALUE .*Did you mean "timeoutMs"\?\n$/,
  ],
  [
    'const locks = new RedisDistributedLock({',
    'stdout',
    /^order:process:456 \d+ \d+n false\nfalse\norder:process:456\n$/,
  ],
  ['async function runOnce', 'stdout', /^false\ntrue\n$/],
  ['NODE_DEBUG=distlock node app.js', 'stderr', /^DISTLOCK \d+: acquire file mutex "app": granted after/m],
  ['npx esbuild app.js', 'stdout', /^app holds app, token \d+\n$/],
  ['-n -- node report.js', 'stdout', /^report under nightly-report, token \d+\n$/],
  ['flock -n "$(npx distlock path nightly-report)"', 'stdout', /^nobody runs nightly-report\n$/],
  ['--postgres "$DATABASE_URL" -w 60', 'stdout', /^report under nightly-report, token \d+\n$/],
  ['-- sh fenced-report.sh', 'stdout', /^$/],
  ['--redis "$REDIS_URL"', 'stdout', /^report under nightly-report, token \d+\n$/],
]

function expectationsOf(block: Block): Array<['stdout' | 'stderr', RegExp]> {
  return EXPECTED.filter(([needle]) => block.code.includes(needle)).map(([, stream, re]) => [stream, re])
}

describe('README.md', () => {
  it('marks every code block with what the tests do with it', () => {
    expect(blocks.length).toBeGreaterThan(20)
    expect(markProblems(blocks)).toEqual([])
  })

  it('links only to files of the repository that exist, and to public URLs', () => {
    expect(linkProblems('README.md')).toEqual([])
    // And the pages it moved its contributor and fault detail to.
    expect(linkProblems('CONTRIBUTING.md')).toEqual([])
    expect(linkProblems('docs/torture.md')).toEqual([])
  })

  it('picks each block it expects output of exactly once', () => {
    for (const [needle] of EXPECTED) {
      expect(blocks.filter((b) => b.code.includes(needle)).length, needle).toBe(1)
    }
  })

  it('type-checks every TypeScript block', () => {
    const { status, output } = typecheckBlocks('README', blocks)
    expect(status, output).toBe(0)
  })

  blockTests(blocks, servers, expectationsOf)

  it('names the test command CI runs', () => {
    const shells = blocks.filter((b) => 'shell' in markOf(b)).map((b) => b.code.trim())
    expect(shells).toContain('npm test')
    expect(readFileSync(join(ROOT, '.ci', 'run'), 'utf8')).toMatch(/^npm test$/m)
  })

  it('the diagnostics_channel example prints what the locks do', async () => {
    const block = blocks.find((b) => b.code.includes("tracingChannel('distlock:acquire')"))
    expect(block).toBeDefined()
    const drive = [
      "import { MemoryLockProvider } from 'distlock'",
      'const p = new MemoryLockProvider()',
      "const h = await p.createLock('orders:42').acquire()",
      "await p.createLock('orders:42').acquire({ timeoutMs: 20 }).catch(() => {})",
      'await h.release()',
    ].join('\n')
    const run = await runBlock({ ...block!, code: `${block!.code}\n${drive}` }, 'memory', servers)
    expect(run.status, run.stderr).toBe(0)
    expect(run.stdout).toMatch(
      /^memory mutex orders:42: granted after \d+\.\d ms\nmemory mutex orders:42: timeout after \d+\.\d ms\n$/,
    )
  })

  it('the OpenTelemetry snippet subscribes and unsubscribes', async () => {
    const block = blocks.find((b) => b.code.includes('instrumentDistlock('))
    expect(block).toBeDefined()
    const code = [
      "import diagnostics_channel from 'node:diagnostics_channel'",
      block!.code,
      "console.log(diagnostics_channel.channel('distlock:lost').hasSubscribers)",
    ].join('\n')
    // Subscribed while the app runs: the line before stop() sees it.
    const during = code.replace(
      'stop() // unsubscribes',
      "console.log(diagnostics_channel.channel('distlock:lost').hasSubscribers)\nstop()",
    )
    const run = await runBlock({ ...block!, code: during }, 'file', servers)
    expect(run.status, run.stderr).toBe(0)
    expect(run.stdout).toBe('true\nfalse\n')
  })
})
