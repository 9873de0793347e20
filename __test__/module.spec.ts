import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

import { ROOT, tempDir, typecheck } from './helpers'

const script = (dir: string) => `
  const lock = new FileLockProvider({ directory: ${JSON.stringify(dir)} }).createLock('m')
  const h = await lock.acquire()
  const busy = await lock.tryAcquire()
  await h.release()
  console.log(typeof h.fencingToken, busy === null, h.isReleased)
`

/** What `run` throws (it must throw). */
function thrown(run: () => unknown): unknown {
  try {
    run()
  } catch (err) {
    return err
  }
  throw new Error('did not throw')
}

describe('module formats', () => {
  it('works from ESM import', () => {
    const out = execFileSync(
      process.execPath,
      ['--input-type=module', '-e', `import { FileLockProvider } from 'distlock'\n${script(tempDir('esm'))}`],
      { cwd: ROOT, encoding: 'utf8', timeout: 15_000 },
    )
    expect(out.trim()).toBe('bigint true true')
  })

  it('works from CJS require', () => {
    const out = execFileSync(
      process.execPath,
      ['-e', `const { FileLockProvider } = require('distlock'); (async () => { ${script(tempDir('cjs'))} })()`],
      { cwd: ROOT, encoding: 'utf8', timeout: 15_000 },
    )
    expect(out.trim()).toBe('bigint true true')
  })

  it('ESM and CJS share one copy of every class', () => {
    const out = execFileSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { createRequire } from 'node:module'
         import * as esm from 'distlock'
         const cjs = createRequire(import.meta.url)('distlock')
         console.log(esm.LockError === cjs.LockError && esm.FileLockProvider === cjs.FileLockProvider)`,
      ],
      { cwd: ROOT, encoding: 'utf8', timeout: 15_000 },
    )
    expect(out.trim()).toBe('true')
  })

  it('the raw binding exports exactly what the TS layer uses', () => {
    const raw = createRequire(__filename)('../native.cjs')
    const keys = Object.keys(raw).filter((k) => !k.startsWith('__'))
    expect(keys.toSorted()).toEqual([
      'CancelToken',
      'NativeChild',
      'NativeHandle',
      'NativeProvider',
      'fileLockPath',
      'setLogger',
      'spawnCommand',
      'validateMaxCount',
      'validateName',
    ])
  })

  it('the raw binding fails with an Error that carries the code and the cause as properties', async () => {
    const raw = createRequire(__filename)('../native.cjs') as typeof import('../native')
    const invalid = thrown(() => raw.validateName(''))
    expect(invalid).toBeInstanceOf(Error)
    expect(invalid).toMatchObject({ code: 'INVALID_ARGUMENT', message: 'name must be a non-empty string' })

    // A lock directory that is a file: the file backend's I/O error, with its facts.
    const file = join(tempDir('raw-errors'), 'a-file')
    writeFileSync(file, 'x')
    const provider = raw.NativeProvider.file(file)
    const settled = new Promise<unknown>((resolve) => provider.onSettle((_id, _handle, error) => resolve(error)))
    const io = await (async () => {
      try {
        return provider.acquire(1, 'x', 'mutex') === undefined ? await settled : 'granted'
      } catch (err) {
        return err
      }
    })()
    expect(io).toBeInstanceOf(Error)
    expect(io).toMatchObject({ code: 'IO', syscall: 'mkdir', path: file, causeMessage: expect.any(String) })
    expect((io as Error).message).toBe(
      `file backend I/O error on ${file}: ${(io as { causeMessage: string }).causeMessage}`,
    )
    await provider.close()
  })

  it('the public types compile under node16, nodenext and bundler resolution', () => {
    for (const [module, resolution] of [
      ['node16', 'node16'],
      ['nodenext', 'nodenext'],
      ['esnext', 'bundler'],
    ]) {
      const { status, output } = typecheck(['__test__/types/usage.mts'], module, resolution)
      expect(status, `${module}/${resolution}: ${output}`).toBe(0)
    }
  })

  it('options take an explicit undefined under exactOptionalPropertyTypes', () => {
    const { status, output } = typecheck(['__test__/types/exact-optional.mts'], 'node16', 'node16', {
      extra: ['--exactOptionalPropertyTypes'],
    })
    expect(status, output).toBe(0)
  })

  it('the declarations need no lib newer than ES2020, with skipLibCheck off', () => {
    const { status, output } = typecheck(['__test__/types/es2020.mts'], 'node16', 'node16', {
      target: 'es2020',
      lib: 'es2020',
      extra: ['--skipLibCheck', 'false'],
    })
    expect(status, output).toBe(0)
  })

  it('declares the Node versions it supports, and CI tests each of them', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }
    // Symbol.asyncDispose, which handles and providers implement, arrived in Node 20.4.
    expect(pkg.engines.node).toBe('>=20.4.0')
    const ci = readFileSync(join(ROOT, '.github', 'workflows', 'ci.yml'), 'utf8')
    const matrices = [...ci.matchAll(/^\s+node: \[(.*)\]$/gm)].map((m) => m[1])
    expect(matrices.length).toBeGreaterThanOrEqual(2)
    for (const m of matrices) expect(m).toBe("'20', '22', '24'")
  })
})
