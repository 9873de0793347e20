import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

import { ROOT, tempDir, typecheck } from './helpers'

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
const blocks = (lang: string) =>
  [...readme.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1])

describe('README examples', () => {
  it('the quick start runs as documented', () => {
    const [quickStart] = blocks('js')
    expect(quickStart).toContain("from 'distlock'")
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', quickStart], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 20_000,
      env: { ...process.env, TMPDIR: tempDir('quickstart') }, // the default directory lives in os.tmpdir()
    })
    expect(out).toMatch(/^holding orders:42 with fencing token \d+n\ndone under the lock\n$/)
  })

  it('the diagnostics_channel example prints what the locks do', () => {
    const block = blocks('js').find((b) => b.includes("tracingChannel('distlock:acquire')"))
    expect(block).toBeDefined()
    const drive = [
      "import { MemoryLockProvider } from 'distlock'",
      'const p = new MemoryLockProvider()',
      "const h = await p.createLock('orders:42').acquire()",
      "await p.createLock('orders:42').acquire({ timeoutMs: 20 }).catch(() => {})",
      'await h.release()',
    ].join('\n')
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', `${block}\n${drive}`], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 20_000,
    })
    expect(out).toMatch(
      /^memory mutex orders:42: granted after \d+\.\d ms\nmemory mutex orders:42: timeout after \d+\.\d ms\n$/,
    )
  })

  it('the TypeScript examples compile', () => {
    const examples = blocks('ts')
    expect(examples.length).toBeGreaterThanOrEqual(2)
    const files = examples.map((code, i) => {
      const file = join(ROOT, '__test__', 'types', `readme-${i}.mts`)
      writeFileSync(file, `// Extracted from README.md by readme.spec.ts\n${code}\nexport {}\n`)
      return file
    })
    const { status, output } = typecheck(files)
    expect(status, output).toBe(0)
  })
})
