// The README's fencing blocks that need a client library (marked `run: custom fencing-<storage>`)
// run here, in a fresh project where distlock and that library are installed, against the test
// servers; and examples/fencing.mjs runs with every storage it knows (examples.spec.ts runs it
// on files only).
import { execFile, spawn } from 'node:child_process'
import { symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { command, parseBlocks, title, type Block } from './doc-blocks'
import { ROOT, tempDir } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

const PG_URL = process.env.DISTLOCK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const MYSQL_URL = process.env.DISTLOCK_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'

/** Each custom block's id, the client library it imports, and what it must print. */
const CUSTOM: Record<string, { pkg: string; prints: RegExp }> = {
  'fencing-postgres': { pkg: 'pg', prints: /^ERR_STALE_FENCING_TOKEN: token \d+ < \d+\npaid\n$/ },
  'fencing-mysql': { pkg: 'mysql2', prints: /^ERR_STALE_FENCING_TOKEN: token \d+ < \d+\n$/ },
  'fencing-redis': { pkg: 'ioredis', prints: /^ERR_STALE_FENCING_TOKEN: token \d+ < \d+\npaid\n$/ },
  'fencing-etcd': { pkg: 'etcd3', prints: /^ERR_STALE_FENCING_TOKEN: token \d+ < \d+\nnode-b\n$/ },
}

const blocks = parseBlocks('README.md').filter((b) => b.mark.startsWith('run: custom fencing-'))
let services: Services
let redisUrl: string
let etcdEndpoint: string
beforeAll(async () => {
  services = await import('../lab/index.mjs')
  redisUrl = (await services.startRedis()).url
  etcdEndpoint = (await services.startEtcd()).endpoint
}, 120_000)
afterAll(() => services?.stopServices())

/** Runs `block` with its library installed and the servers' URLs in its environment. */
function runCustom(block: Block, pkg: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const { cmd, args, cwd, env } = command(block, 'file', {})
  symlinkSync(join(ROOT, 'node_modules', pkg), join(cwd, 'node_modules', pkg), 'dir')
  Object.assign(env, { DATABASE_URL: PG_URL, MYSQL_URL, REDIS_URL: redisUrl, ETCD_ENDPOINT: etcdEndpoint })
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 25_000)
    child.on('error', reject)
    child.on('close', (status) => {
      clearTimeout(timer)
      resolve({ status, stdout, stderr })
    })
  })
}

describe('README: the fencing blocks', () => {
  it('has one block for each custom runner here, and no other', () => {
    expect(blocks.map((b) => b.mark.slice('run: custom '.length)).toSorted()).toEqual(Object.keys(CUSTOM).toSorted())
  })

  for (const block of blocks) {
    const id = block.mark.slice('run: custom '.length)
    it(`runs ${title(block)}`, async () => {
      const { pkg, prints } = CUSTOM[id]!
      const run = await runCustom(block, pkg)
      expect(run.status, `${run.stdout}\n${run.stderr}`).toBe(0)
      expect(run.stdout).toMatch(prints)
    })
  }
})

describe('examples/fencing.mjs', () => {
  it('the file, PostgreSQL, Redis and etcd guards each reject the late write and keep B’s', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [join(ROOT, 'examples', 'fencing.mjs')], {
      cwd: ROOT,
      timeout: 60_000,
      env: {
        ...process.env,
        DISTLOCK_EXAMPLE_DIR: tempDir('example-fencing'),
        DISTLOCK_EXAMPLE_PG_URL: PG_URL,
        DISTLOCK_EXAMPLE_REDIS: redisUrl,
        DISTLOCK_EXAMPLE_ETCD: etcdEndpoint,
      },
    })
    expect(stdout).toMatch(/^etcd: A's late write rejected: token (\d+) is older than (\d+); B still holds$/m)
    for (const storage of ['file', 'postgres', 'redis']) {
      expect(stdout).toMatch(
        new RegExp(
          `^${storage}: A's late write rejected: token (\\d+) is older than (\\d+); the row still says "written by B"$`,
          'm',
        ),
      )
    }
  })
})
