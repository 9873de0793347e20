// A worker pool limited across processes: four worker processes, each running three jobs at a
// time, call a service that allows at most three calls at once in total. A semaphore with
// maxCount 3 is the limit: a job holds one permit while it calls, and waits for one otherwise.
// Marker files in a shared directory count the calls in progress.
//
//   node examples/semaphore-pool.mjs
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { makeProvider } from './provider.mjs'

const LIMIT = 3 // calls at once, across every process
const WORKERS = ['w1', 'w2', 'w3', 'w4']
const CONCURRENCY = 3 // jobs each worker process runs at a time
const JOBS_PER_WORKER = 12
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const [role, id, dir] = process.argv.slice(2)

if (role === 'worker') {
  const provider = makeProvider()
  const slots = provider.createSemaphore('example-service-calls', LIMIT)
  let next = 0
  let mostAtOnce = 0
  const runner = async () => {
    while (next < JOBS_PER_WORKER) {
      const job = next++
      await slots.withLock(
        async () => {
          const marker = join(dir, `${id}-${job}`)
          writeFileSync(marker, '')
          await sleep(15) // the call to the service
          mostAtOnce = Math.max(mostAtOnce, readdirSync(dir).length)
          rmSync(marker)
        },
        { timeoutMs: 30_000 },
      )
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, runner))
  console.log(JSON.stringify({ jobs: JOBS_PER_WORKER, mostAtOnce }))
  await provider.close()
} else {
  const calls = join(mkdtempSync(join(tmpdir(), 'distlock-pool-')), 'calls')
  mkdirSync(calls)
  const script = fileURLToPath(import.meta.url)
  const results = await Promise.all(
    WORKERS.map(
      (w) =>
        new Promise((resolve, reject) => {
          let out = ''
          const child = spawn(process.execPath, [script, 'worker', w, calls], { stdio: ['ignore', 'pipe', 'inherit'] })
          child.stdout.on('data', (d) => (out += d))
          child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`${w} exited ${code}`))))
        }),
    ),
  )
  const jobs = results.reduce((sum, r) => sum + r.jobs, 0)
  const mostAtOnce = Math.max(...results.map((r) => r.mostAtOnce))
  rmSync(join(calls, '..'), { recursive: true })
  console.log(`${jobs} jobs by ${WORKERS.length} workers; at most ${mostAtOnce} calls at once (limit ${LIMIT})`)
  if (mostAtOnce > LIMIT || mostAtOnce < 2) process.exit(1)
}
