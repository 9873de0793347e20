import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { describe, expect, it } from 'vitest'

import { ROOT, tempDir, typecheck } from './helpers'

const script = (dir: string) => `
  const lock = new FileLockProvider({ directory: ${JSON.stringify(dir)} }).createLock('m')
  const h = await lock.acquire()
  const busy = await lock.tryAcquire()
  await h.release()
  console.log(typeof h.fencingToken, busy === null, h.isReleased)
`

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
      'NativeHandle',
      'NativeProvider',
      'validateMaxCount',
      'validateName',
    ])
    expect(() => raw.validateName('')).toThrow(/^INVALID_ARGUMENT: name must be a non-empty string$/)
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
})
