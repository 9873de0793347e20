// Leader election: four candidate processes campaign for one lock; the holder leads. A leader
// that is told to stop resigns cleanly (releases, and the next candidate leads at once); a
// leader that dies (kill -9) is replaced as soon as the backend frees its lock; a leader whose
// lock is lost (handle.signal aborts: lease expired, session dropped) stops leading at once.
//
//   node examples/leader-election.mjs
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

import { makeProvider } from './provider.mjs'

const [role, id] = process.argv.slice(2)

if (role === 'candidate') {
  const provider = makeProvider()
  const resign = new AbortController()
  process.on('SIGTERM', () => resign.abort())
  const lock = provider.createLock('example-leader')
  while (!resign.signal.aborted) {
    let handle
    try {
      handle = await lock.acquire({ signal: resign.signal }) // wait to become leader
    } catch {
      break // resigned while waiting
    }
    console.log(`LEADER ${id} token ${handle.fencingToken}`)
    // Lead until told to resign or until the lock is lost, whichever comes first.
    const stop = AbortSignal.any([resign.signal, handle.signal])
    while (!stop.aborted) {
      await new Promise((resolve) => setTimeout(resolve, 50)) // one unit of leader work
    }
    if (handle.signal.aborted) console.log(`LOST ${id}: ${handle.signal.reason.message}`)
    await handle.release()
  }
  await provider.close()
  console.log(`RESIGNED ${id}`)
} else {
  const script = fileURLToPath(import.meta.url)
  const candidates = new Map()
  const leaders = []
  let onLeader = () => leaders.length
  for (const c of ['a', 'b', 'c', 'd']) {
    const child = spawn(process.execPath, [script, 'candidate', c], { stdio: ['ignore', 'pipe', 'inherit'] })
    candidates.set(c, child)
    child.stdout.setEncoding('utf8').on('data', (text) => {
      for (const line of text.trim().split('\n')) {
        console.log(`[${c}] ${line}`)
        if (line.startsWith('LEADER')) {
          leaders.push(line.split(' ')[1])
          onLeader()
        }
      }
    })
  }
  const nextLeader = (count) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no new leader within 15 s')), 15_000)
      onLeader = () => leaders.length >= count && (clearTimeout(timer), resolve(leaders.at(-1)))
      onLeader()
    })
  const first = await nextLeader(1)
  console.log(`telling ${first} to resign`)
  candidates.get(first).kill('SIGTERM')
  const second = await nextLeader(2)
  console.log(`killing ${second} with SIGKILL`)
  candidates.get(second).kill('SIGKILL')
  const third = await nextLeader(3)
  if (process.env.DISTLOCK_EXAMPLE_REDIS) {
    // With a lease (Redis, leaseMs 1 000): a leader frozen past its lease loses the lock; the
    // other candidate takes over, and the frozen one learns it on waking and stops leading.
    console.log(`freezing ${third} (SIGSTOP) past its lease`)
    candidates.get(third).kill('SIGSTOP')
    await nextLeader(4)
    candidates.get(third).kill('SIGCONT')
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
  console.log(`leaders in turn: ${leaders.join(', ')}`)
  for (const child of candidates.values()) child.kill('SIGTERM')
  if (new Set([first, second, third]).size !== 3) process.exit(1)
}
