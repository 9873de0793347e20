// A loopback TCP proxy for fault injection, controlled in-process by the spec or torture row that
// started it.
//
// Modes (switch at any time with setMode):
// - pass: bytes flow both ways.
// - delay(ms): every chunk is held `ms` before it is forwarded, in each direction (order kept).
// - blackhole: connections stay open and new ones are accepted, but no byte is forwarded either
//   way and nobody gets an error: a silent partition, or a server that accepts and never answers.
//   The withheld bytes are dropped when the mode becomes reset; on a switch to pass or delay they
//   are delivered, as TCP delivers retransmitted segments once a partition heals.
// - reset: every connection is destroyed with a TCP RST, and new ones are reset at once, until
//   the mode changes.
import { createServer, connect } from 'node:net'

import { onCleanup } from './cleanup.mjs'

/** Bytes withheld per direction of one connection at most; beyond that the connection is reset. */
const HELD_LIMIT = 16 * 1024 * 1024

/** One direction of one proxied connection: a queue of chunks with the time each may leave. */
class Lane {
  constructor(proxy, to) {
    this.proxy = proxy
    this.to = to
    this.queue = []
    this.held = 0
    this.timer = null
  }

  push(chunk) {
    const { mode, delayMs } = this.proxy
    if (mode === 'reset') return
    const at = mode === 'blackhole' ? Infinity : performance.now() + (mode === 'delay' ? delayMs : 0)
    this.queue.push({ at, chunk })
    this.held += chunk.length
    if (this.held > HELD_LIMIT) return this.proxy.kill(this.conn)
    this.pump()
  }

  /** Called on a mode change: withheld chunks may leave now (or never). */
  heal(drop) {
    if (drop) {
      this.queue = []
      this.held = 0
      return
    }
    const now = performance.now()
    for (const item of this.queue) if (item.at === Infinity) item.at = now
    this.pump()
  }

  pump() {
    if (this.timer) {
      clearTimeout(this.timer)
      this.timer = null
    }
    const now = performance.now()
    while (this.queue.length && this.queue[0].at <= now) {
      const { chunk } = this.queue.shift()
      this.held -= chunk.length
      if (!this.to.destroyed) this.to.write(chunk)
    }
    if (this.queue.length && this.queue[0].at !== Infinity) {
      this.timer = setTimeout(() => this.pump(), Math.max(0, this.queue[0].at - now))
    }
  }

  stop() {
    if (this.timer) clearTimeout(this.timer)
    this.queue = []
  }
}

export class FaultProxy {
  /** @param {{ host?: string, port: number }} upstream where the bytes go (loopback only) */
  constructor(upstream) {
    if (upstream.host && upstream.host !== '127.0.0.1' && upstream.host !== 'localhost') {
      throw new Error(`the fault proxy only forwards to loopback, not ${upstream.host}`)
    }
    this.upstream = { host: '127.0.0.1', port: upstream.port }
    this.mode = 'pass'
    this.delayMs = 0
    this.conns = new Set()
    this.accepted = 0
    this.server = createServer({ noDelay: true }, (client) => this.#accept(client))
    this.server.on('error', () => {})
  }

  /** Starts listening on 127.0.0.1:`port` (0: a free port); resolves to the port. */
  listen(port = 0) {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(port, '127.0.0.1', () => {
        this.port = this.server.address().port
        resolve(this.port)
      })
    })
  }

  /** `pass`, `delay` (with `delayMs`), `blackhole` or `reset`. */
  setMode(mode, delayMs = 0) {
    if (!['pass', 'delay', 'blackhole', 'reset'].includes(mode)) throw new Error(`unknown proxy mode ${mode}`)
    const previous = this.mode
    this.mode = mode
    this.delayMs = delayMs
    if (mode === 'reset') {
      for (const conn of this.conns) this.kill(conn)
    } else if (previous === 'blackhole' || previous === 'delay') {
      for (const conn of this.conns) for (const lane of conn.lanes) lane.heal(false)
    }
  }

  /** Resets one connection (RST both sides). */
  kill(conn) {
    if (!conn || !this.conns.has(conn)) return
    this.conns.delete(conn)
    for (const lane of conn.lanes) lane.stop()
    for (const s of [conn.client, conn.server]) {
      if (s.destroyed) continue
      try {
        s.resetAndDestroy()
      } catch {
        s.destroy()
      }
    }
  }

  #accept(client) {
    this.accepted++
    client.on('error', () => {})
    if (this.mode === 'reset') {
      if (typeof client.resetAndDestroy === 'function') client.resetAndDestroy()
      else client.destroy()
      return
    }
    const server = connect({ ...this.upstream, noDelay: true })
    server.on('error', () => {})
    const conn = { client, server, lanes: [] }
    const up = new Lane(this, server)
    const down = new Lane(this, client)
    up.conn = conn
    down.conn = conn
    conn.lanes = [up, down]
    this.conns.add(conn)
    client.on('data', (chunk) => up.push(chunk))
    server.on('data', (chunk) => down.push(chunk))
    // One side closing (not by a fault) closes the other, without a reset.
    const end = () => {
      if (!this.conns.delete(conn)) return
      for (const lane of conn.lanes) lane.stop()
      client.destroy()
      server.destroy()
    }
    client.on('close', end)
    server.on('close', end)
  }

  /** Closes the listener and resets every connection; may be called again. */
  async close() {
    for (const conn of this.conns) this.kill(conn)
    this.closed ??= new Promise((resolve) => this.server.close(() => resolve()))
    await this.closed
  }
}

/**
 * A started proxy in front of 127.0.0.1:`port`, closed by stopServices() / cleanupAll() too. It
 * listens on a free port, or on `listen` (a port a client was given before the proxy existed).
 */
export async function startProxy(port, { listen = 0 } = {}) {
  const proxy = new FaultProxy({ port })
  await proxy.listen(listen)
  onCleanup(() => proxy.close())
  return proxy
}
