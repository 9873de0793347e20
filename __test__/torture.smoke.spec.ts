// The smoke subset of the stress-and-fault suite (torture/run.mjs --smoke): real worker processes,
// real servers, real faults, in under two minutes. It must keep every promise, and every row must
// have granted locks, so a row that silently did nothing cannot pass.
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect, it } from 'vitest'

import { ROOT, tempDir } from './helpers'

interface Row {
  id: string
  ok: boolean
  outcome: string
  violations: string[]
  metrics: { grants: number }
}

/** Runs the smoke subset; kills it (SIGINT, then SIGKILL) if it outlives `ms`. */
function runSmoke(out: string, ms: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['torture/run.mjs', '--smoke', '--out', out], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    const collect = (d: Buffer) => (output = (output + d.toString()).slice(-20_000))
    child.stdout.on('data', collect)
    child.stderr.on('data', collect)
    const interrupt = setTimeout(() => child.kill('SIGINT'), ms)
    const kill = setTimeout(() => child.kill('SIGKILL'), ms + 5_000)
    child.on('exit', (code) => {
      clearTimeout(interrupt)
      clearTimeout(kill)
      resolve({ code, output })
    })
  })
}

it('keeps every promise of the smoke subset, with grants in every row', { timeout: 130_000 }, async () => {
  const out = tempDir('torture')
  const { code, output } = await runSmoke(out, 120_000)
  const file = join(out, 'smoke.json')
  expect(existsSync(file), `no report was written:\n${output}`).toBe(true)
  const { results } = JSON.parse(readFileSync(file, 'utf8')) as { results: Row[] }
  expect(results.length).toBeGreaterThan(10)
  for (const row of results) expect(row.metrics.grants, `${row.id}: ${row.outcome}`).toBeGreaterThan(0)
  const broken = results.filter((r) => !r.ok).map((r) => `${r.id}: ${r.violations.slice(0, 3).join('; ')}`)
  expect(broken, output.slice(-4_000)).toEqual([])
  expect(code).toBe(0)
})
