// distlock loads a native addon, which bundlers cannot inline: an app that bundles its own code
// and leaves distlock external (as the README says) runs; one that tries to inline it fails at
// build time with the bundler's own clear error, not at run time.
import { execFileSync } from 'node:child_process'
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { buildSync } from 'esbuild'
import { describe, expect, it } from 'vitest'

import { ROOT, tempDir } from './helpers'

const APP = `
import { FileLockProvider } from 'distlock'
import { helper } from './helper.mjs'
const locks = new FileLockProvider({ directory: process.argv[2] })
await using h = await locks.createLock('bundled').acquire({ timeoutMs: 1000 })
console.log(helper(h.name, h.fencingToken))
`

/** An app directory where `distlock` is installed (a link to this checkout). */
function appDir(): string {
  const dir = tempDir('bundle')
  writeFileSync(join(dir, 'app.mjs'), APP)
  writeFileSync(join(dir, 'helper.mjs'), 'export const helper = (name, token) => `bundled ${name} ${typeof token}`\n')
  mkdirSync(join(dir, 'node_modules'))
  symlinkSync(ROOT, join(dir, 'node_modules', 'distlock'), 'dir')
  return dir
}

/** Bundles the app in `dir` for Node 20 into `dir/dist/app.mjs`, leaving `external` out. */
function bundle(dir: string, external: string[]): void {
  buildSync({
    entryPoints: [join(dir, 'app.mjs')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external,
    outfile: join(dir, 'dist', 'app.mjs'),
    logLevel: 'silent',
  })
}

describe('bundlers', () => {
  it('esbuild: an app bundled with distlock external runs', () => {
    const dir = appDir()
    const outfile = join(dir, 'dist', 'app.mjs')
    bundle(dir, ['distlock'])
    const out = execFileSync(process.execPath, [outfile, join(dir, 'locks')], { cwd: dir, encoding: 'utf8' })
    expect(out).toBe('bundled bundled bigint\n')
  })

  it('esbuild: inlining distlock fails at build time on the addon', () => {
    const dir = appDir()
    let message = ''
    try {
      bundle(dir, [])
    } catch (err) {
      message = (err as Error).message
    }
    expect(message).toMatch(/No loader is configured for "\.node" files/)
  })
})
