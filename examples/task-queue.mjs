// Claiming tasks from a shared queue: three worker processes go through the same 30 tasks; a
// worker claims a task with tryAcquire on its own lock, processes it unless it is marked done,
// and marks it done before releasing. Every task is processed exactly once.
//
//   node examples/task-queue.mjs
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { makeProvider } from './provider.mjs'

const TASKS = 30
const [role, worker, doneDir] = process.argv.slice(2)

if (role === 'worker') {
  const provider = makeProvider()
  let mine = 0
  for (let task = 0; task < TASKS; task++) {
    const claim = await provider.createLock(`example-task-${task}`).tryAcquire()
    if (!claim) continue // another worker has it right now
    try {
      const marker = join(doneDir, `task-${task}`)
      if (existsSync(marker)) continue // done already
      await new Promise((resolve) => setTimeout(resolve, 5)) // the work
      writeFileSync(marker, worker)
      mine++
    } finally {
      await claim.release()
    }
  }
  console.log(`worker ${worker} processed ${mine} tasks`)
  await provider.close()
} else {
  const dir = mkdtempSync(join(tmpdir(), 'distlock-tasks-'))
  const script = fileURLToPath(import.meta.url)
  const workers = ['w1', 'w2', 'w3'].map(
    (w) =>
      new Promise((resolve) =>
        spawn(process.execPath, [script, 'worker', w, dir], { stdio: 'inherit' }).on('exit', resolve),
      ),
  )
  await Promise.all(workers)
  const done = readdirSync(dir)
  const workersSeen = new Set(done.map((f) => readFileSync(join(dir, f), 'utf8')))
  console.log(`${done.length} of ${TASKS} tasks processed, each once, by ${[...workersSeen].toSorted().join(', ')}`)
  if (done.length !== TASKS) process.exit(1)
}
