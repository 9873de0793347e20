#!/usr/bin/env node
// Issue 12's driver spike: how fast can a JS `net.Socket` carry distlock's W1 (its own acquire and
// release scripts by EVALSHA, one loop, one name) with the protocol done as cheaply as possible
// (RESP written and read by hand in JS, no library)? That is a ceiling for the "JS socket, Rust
// protocol" design, which would add a native call per chunk on top; the row to compare it with is
// distlock's W1 on the uv_poll driver, run against the same server right after.
//
//   node bench/spike-socket.mjs [seconds]     (needs a release build: npm run build:native)
import { createRequire } from 'node:module'
import net from 'node:net'
import path from 'node:path'

import { distlockScripts } from './lib.mjs'

const root = path.join(import.meta.dirname, '..')
const require = createRequire(path.join(root, 'package.json'))
const SECONDS = Number(process.argv[2] ?? 3)
const services = await import('../lab/index.mjs')
const server = await services.startRedis()

const scripts = distlockScripts()
if (!scripts) throw new Error('cargo run --example scripts failed')

const cmd = (...args) => {
  let s = `*${args.length}\r\n`
  for (const a of args) s += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`
  return s
}

const names = (k) => Array.from({ length: k }, (_, i) => `spike-${i}`)

// Requests pipelined on one socket, answered in order: each reply is cut from the buffer as
// soon as it is whole.
function client(port) {
  const sock = net.connect({ port, host: '127.0.0.1', noDelay: true })
  const waiting = []
  let buf = ''
  sock.setEncoding('latin1')
  sock.on('data', (d) => {
    buf += d
    for (;;) {
      const end = replyEnd(buf, 0)
      if (end < 0) break
      waiting.shift()(buf.slice(0, end))
      buf = buf.slice(end)
    }
  })
  return {
    ready: new Promise((r) => sock.once('connect', r)),
    send(s) {
      return new Promise((resolve) => {
        waiting.push(resolve)
        sock.write(s)
      })
    },
    close: () => sock.end(),
  }
}

// Where the RESP reply starting at `at` ends, or -1 if it is not whole yet.
function replyEnd(s, at) {
  const end = s.indexOf('\r\n', at)
  if (end < 0) return -1
  const kind = s[at]
  const n = Number(s.slice(at + 1, end))
  let next = end + 2
  if (kind === '*') {
    for (let i = 0; i < n; i++) {
      next = replyEnd(s, next)
      if (next < 0) return -1
    }
  } else if (kind === '$' && n >= 0) {
    if (s.length < next + n + 2) return -1
    next += n + 2
  }
  return next
}

try {
  const c = client(server.port)
  await c.ready
  const sha = async (lua) => (await c.send(cmd('SCRIPT', 'LOAD', lua))).split('\r\n')[1]
  const [acq, rel] = [await sha(scripts.acquire), await sha(scripts.release)]
  const stem = '{spike}:distlock:'
  const keys = ['spike', `${stem}readers`, `${stem}fence`, `${stem}queue`, `${stem}queue-deadlines`, `${stem}revoked`]
  let n = 0
  const cycle = (name) => async () => {
    const tok = `t${n++}`
    const ks = [name, ...keys.slice(1).map((k) => k.replace('{spike}', `{${name}}`))]
    const got = await c.send(cmd('EVALSHA', acq, 6, ...ks, 'w', tok, 30000, 0, 0, 1, 'distlock:wake', 'w', 0))
    if (!got.startsWith('*2\r\n:1\r\n')) throw new Error(`not granted: ${JSON.stringify(got)}`)
    await new Promise(setImmediate)
    await c.send(cmd('EVALSHA', rel, 6, ...ks, 'w', tok, 1, 'distlock:wake', 0, 0))
  }
  // `loops` loops, each on its own name (W1: 1, W2: 64), each yielding once while it holds.
  const measure = async (label, fns) => {
    for (let i = 0; i < 200; i++) await Promise.all(fns.map((f) => f()))
    const t0 = process.hrtime.bigint()
    const c0 = process.cpuUsage()
    const until = t0 + BigInt(SECONDS * 1e9)
    let ops = 0
    await Promise.all(
      fns.map(async (f) => {
        while (process.hrtime.bigint() < until) {
          await f()
          ops++
        }
      }),
    )
    const secs = Number(process.hrtime.bigint() - t0) / 1e9
    const cpu = process.cpuUsage(c0)
    const row = { label, opsPerSec: Math.round(ops / secs), cpuUsPerOp: +((cpu.user + cpu.system) / ops).toFixed(1) }
    console.log(JSON.stringify(row))
    return row
  }
  await measure('W1 net.Socket, RESP by hand in JS, distlock scripts', names(1).map(cycle))
  await measure('W2 net.Socket, RESP by hand in JS, distlock scripts', names(64).map(cycle))
  c.close()
  const { RedisLockProvider } = require(root)
  const p = new RedisLockProvider({ urls: [server.url] })
  const loop = (name) => {
    const lock = p.createLock(name)
    return async () => {
      const h = await lock.acquire()
      await new Promise(setImmediate)
      await h.release()
    }
  }
  await measure(
    `W1 distlock, ${p.driver} driver`,
    names(1).map((x) => loop(`d${x}`)),
  )
  await measure(
    `W2 distlock, ${p.driver} driver`,
    names(64).map((x) => loop(`d${x}`)),
  )
  await p.close()
} finally {
  services.stopServices()
}
