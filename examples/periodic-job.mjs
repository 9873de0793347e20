// Coordinating a periodic job across processes: three processes each try to run a compaction
// every 100 ms; tryAcquire lets exactly one run at a time and the others skip that round
// instead of queueing up. An exclusive marker file proves no two runs overlap.
//
//   node examples/periodic-job.mjs
import { spawn } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, unlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { makeProvider } from './provider.mjs'

const [role, dir] = process.argv.slice(2)

if (role === 'node') {
  const provider = makeProvider()
  const job = provider.createLock('example-compaction')
  let ran = 0
  let skipped = 0
  let overlaps = 0
  for (let round = 0; round < 15; round++) {
    const handle = await job.tryAcquire()
    if (handle) {
      try {
        let fd
        try {
          fd = openSync(join(dir, 'running'), 'wx') // fails if another run is inside
        } catch {
          overlaps++
        }
        await new Promise((resolve) => setTimeout(resolve, 60)) // the compaction
        if (fd !== undefined) {
          closeSync(fd)
          unlinkSync(join(dir, 'running'))
        }
        ran++
      } finally {
        await handle.release()
      }
    } else {
      skipped++
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  console.log(JSON.stringify({ ran, skipped, overlaps }))
  await provider.close()
} else {
  const shared = mkdtempSync(join(tmpdir(), 'distlock-periodic-'))
  const script = fileURLToPath(import.meta.url)
  const results = await Promise.all(
    [0, 1, 2].map(
      () =>
        new Promise((resolve) => {
          let out = ''
          const child = spawn(process.execPath, [script, 'node', shared], { stdio: ['ignore', 'pipe', 'inherit'] })
          child.stdout.on('data', (d) => (out += d))
          child.on('exit', () => resolve(JSON.parse(out)))
        }),
    ),
  )
  const total = results.reduce((a, r) => ({
    ran: a.ran + r.ran,
    skipped: a.skipped + r.skipped,
    overlaps: a.overlaps + r.overlaps,
  }))
  console.log(`compaction ran ${total.ran} times, skipped ${total.skipped} times, overlapping runs: ${total.overlaps}`)
  if (total.overlaps !== 0 || total.ran === 0) process.exit(1)
}
