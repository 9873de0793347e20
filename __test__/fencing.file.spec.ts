// The file guard, fencedWriteFile: the token rule, the atomic replace, writers in several
// processes at once, and a holder frozen past its lease.
import { execFile } from 'node:child_process'
import { chmodSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { StaleFencingTokenError, fencedWriteFile } from 'distlock'

import { ROOT, tempDir } from './helpers'
import { frozenHolder } from './fixtures/fencing-frozen'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })
const execNode = promisify(execFile)

let services: Services
let redisUrl: string
beforeAll(async () => {
  services = await import('../lab/index.mjs')
  redisUrl = (await services.startRedis()).url
})
afterAll(() => services?.stopServices())

/** The files of `dir` other than the data and its sidecar: the lock file, and no temporary file. */
const extras = (dir: string, name: string) => readdirSync(dir).filter((f) => f !== name && f !== `${name}.fence`)

describe('fencedWriteFile', () => {
  it('accepts a larger or equal token, rejects a smaller one and leaves the file untouched', async () => {
    const dir = tempDir('fence-file')
    const path = join(dir, 'report.json')
    await fencedWriteFile(path, 'one', 5n)
    await fencedWriteFile(path, Buffer.from('two'), 5n)
    await fencedWriteFile(pathToFileURL(path), 'three', 9n)
    expect(readFileSync(path, 'utf8')).toBe('three')
    expect(readFileSync(`${path}.fence`, 'utf8')).toBe('9\n')
    const before = statSync(path)
    const err = await fencedWriteFile(path, 'stale', 8n).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(StaleFencingTokenError)
    expect(err).toMatchObject({ code: 'ERR_STALE_FENCING_TOKEN', resource: path, token: 8n, current: 9n })
    expect(readFileSync(path, 'utf8')).toBe('three')
    expect(statSync(path).ino).toBe(before.ino)
    expect(readFileSync(`${path}.fence`, 'utf8')).toBe('9\n')
    // Beside the data: its sidecar and the lock file of the guard, no temporary file.
    expect(extras(dir, 'report.json')).toEqual([expect.stringMatching(/^report\.json\.fence-[0-9a-f]{16}\.lock$/)])
  })

  it('replaces the file by a rename (a new inode), keeping its mode', async () => {
    const dir = tempDir('fence-mode')
    const path = join(dir, 'data.txt')
    writeFileSync(path, 'unfenced')
    chmodSync(path, 0o600)
    const before = statSync(path).ino
    await fencedWriteFile(path, 'fenced', 1n)
    expect(statSync(path).ino).not.toBe(before)
    expect(statSync(path).mode & 0o777).toBe(0o600)
    expect(readFileSync(path, 'utf8')).toBe('fenced')
  })

  it('refuses arguments of the wrong type, a sidecar that holds no token, and a directory that does not exist', async () => {
    const dir = tempDir('fence-args')
    const path = join(dir, 'f')
    await expect(fencedWriteFile(42 as unknown as string, 'x', 1n)).rejects.toThrow(/"path" argument/)
    await expect(fencedWriteFile(path, { a: 1 } as unknown as string, 1n)).rejects.toThrow(/"data" argument/)
    await expect(fencedWriteFile(path, 'x', 1 as unknown as bigint)).rejects.toThrow(
      /"token" argument must be a bigint/,
    )
    await expect(fencedWriteFile(path, 'x', -1n)).rejects.toThrow(RangeError)
    writeFileSync(`${path}.fence`, 'garbage')
    await expect(fencedWriteFile(path, 'x', 1n)).rejects.toThrow(/holds "garbage", not a fencing token/)
    expect(existsSync(path)).toBe(false)
    await expect(fencedWriteFile(join(dir, 'missing', 'f'), 'x', 1n)).rejects.toMatchObject({ code: 'ENOENT' })
    expect(existsSync(join(dir, 'missing'))).toBe(false)
  })

  it('writers in four processes at once: the file ends with the largest token’s data, and each smaller-than-seen write is refused', async () => {
    const dir = tempDir('fence-procs')
    const path = join(dir, 'shared.txt')
    // Each process writes tokens i, i+4, i+8 … in shuffled order: many writes come after a larger one.
    const script = `
      const { fencedWriteFile, StaleFencingTokenError } = require('distlock')
      const [path, start] = process.argv.slice(1)
      const tokens = Array.from({ length: 25 }, (_, k) => BigInt(Number(start) + 4 * k)).sort(() => Math.random() - 0.5)
      ;(async () => {
        let ok = 0, stale = 0
        for (const t of tokens) {
          try { await fencedWriteFile(path, 'token ' + t, t); ok++ }
          catch (e) { if (!(e instanceof StaleFencingTokenError)) throw e; stale++ }
        }
        console.log(ok + ' ' + stale)
      })()`
    const outs = await Promise.all(
      [1, 2, 3, 4].map((start) =>
        execNode(process.execPath, ['-e', script, path, String(start)], { cwd: ROOT, timeout: 60_000 }),
      ),
    )
    const counts = outs.map((o) => o.stdout.trim().split(' ').map(Number))
    expect(counts.reduce((n, [ok, stale]) => n + ok! + stale!, 0)).toBe(100)
    expect(counts.reduce((n, [, stale]) => n + stale!, 0)).toBeGreaterThan(0)
    expect(readFileSync(path, 'utf8')).toBe('token 100')
    expect(readFileSync(`${path}.fence`, 'utf8')).toBe('100\n')
    expect(extras(dir, 'shared.txt')).toHaveLength(1)
  })

  it('a holder frozen past its lease is rejected when it wakes; the newer holder’s file is intact', async () => {
    const dir = tempDir('fence-frozen')
    const path = join(dir, 'doc.txt')
    const run = await frozenHolder('file', path, redisUrl, `fencing-file-${process.pid}`, (token) =>
      fencedWriteFile(path, 'written by the newer holder', token),
    )
    expect(run.newer).toBeGreaterThan(run.stale)
    expect(run.result).toBe(`REJECTED ERR_STALE_FENCING_TOKEN ${run.stale} ${run.newer} ${path}`)
    expect(readFileSync(path, 'utf8')).toBe('written by the newer holder')
    expect(extras(dir, 'doc.txt')).toHaveLength(1)
  })
})
