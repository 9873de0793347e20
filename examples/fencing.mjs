// Protecting a write with a fencing token checked by the storage. A lock can be lost while its
// holder is paused (a lease expires during a GC pause, a session drops); the paused holder may
// then write after the next holder did. The storage keeps the highest token it has accepted and
// rejects writes that carry a smaller one, so the late write cannot overwrite newer data.
//
//   node examples/fencing.mjs
import { makeProvider } from './provider.mjs'

/** A stand-in for a database row or object store that checks fencing tokens. */
class FencedStorage {
  #highest = 0n
  value = null
  write(token, value) {
    if (token < this.#highest) throw new Error(`rejected: token ${token} is older than ${this.#highest}`)
    this.#highest = token
    this.value = value
  }
}

const provider = makeProvider()
const lock = provider.createLock('example-fenced-row')
const storage = new FencedStorage()

// Worker A gets the lock, then stalls before writing; for this demonstration its lock ends
// (release stands in for a lease that expired while A was paused).
const a = await lock.acquire()
const tokenA = a.fencingToken
await a.release()

// Worker B gets the lock next and writes.
const b = await lock.acquire()
storage.write(b.fencingToken, 'written by B')
await b.release()

// A wakes up and writes with its old token: the storage refuses.
try {
  storage.write(tokenA, 'written by A (stale)')
  console.log('the stale write went through')
  process.exitCode = 1
} catch (err) {
  console.log(`A's late write ${err.message}; the row still says "${storage.value}"`)
}
await provider.close()
