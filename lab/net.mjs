// Loopback ports and waiting: a free port, whether one accepts connections, a bounded poll.
import { connect, createServer } from 'node:net'

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** A port of 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
    srv.on('error', reject)
  })
}

/** `count` distinct free loopback ports. */
export async function freePorts(count) {
  const ports = new Set()
  for (let i = 0; i < count * 20 && ports.size < count; i++) ports.add(await freePort())
  if (ports.size < count) throw new Error(`could not find ${count} free loopback ports`)
  return [...ports]
}

/** Whether 127.0.0.1:`port` accepts a TCP connection within `ms`. */
export function reachable(port, ms = 300) {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    const done = (ok) => {
      s.destroy()
      resolve(ok)
    }
    s.setTimeout(ms, () => done(false))
    s.on('connect', () => done(true))
    s.on('error', () => done(false))
  })
}

/** Polls `check` every 25 ms until it returns truthy, for at most `ms`; throws naming `what`. */
export async function waitFor(check, what, ms = 10_000) {
  const deadline = performance.now() + ms
  while (performance.now() < deadline) {
    if (await check()) return
    await sleep(25)
  }
  throw new Error(`${what} did not happen within ${ms} ms`)
}
