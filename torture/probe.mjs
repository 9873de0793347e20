// One single-process scenario of the torture suite, in a child process so that a call that
// blocks cannot stall the runner (whose event loop carries the fault proxies). The runner injects
// the faults: this process asks for one with `fault(name)` over IPC and waits until it is done.
// The result is one JSON message { result } to the runner.
//
// Usage: forked by torture/run.mjs with '<json config>': { scenario, direct, proxied, name, … }
import { createRequire } from 'node:module'

const cfg = JSON.parse(process.argv[2])
const lib = createRequire(import.meta.url)('../')
const now = () => performance.now()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const providers = []
function provider(p, extra = {}) {
  const made =
    p.type === 'postgres'
      ? new lib.PostgresLockProvider({ connectionString: p.connectionString })
      : new lib.RedisLockProvider({ urls: p.urls, leaseMs: p.leaseMs, extendEveryMs: p.extendEveryMs, ...extra })
  providers.push(made)
  return made
}

/** Grants this scenario obtained (a row with none proves nothing). */
let grants = 0
/** Awaits an acquire and counts the grant. */
async function got(promise) {
  const h = await promise
  if (h) grants++
  return h
}

let seq = 0
const asked = new Map()
process.on('message', (msg) => {
  const done = asked.get(msg?.done)
  if (done) {
    asked.delete(msg.done)
    done(msg)
  }
})
/** Asks the runner for a fault (or a heal) and waits until it has happened. */
function fault(name, args = {}) {
  const id = ++seq
  return new Promise((resolve) => {
    asked.set(id, resolve)
    process.send({ fault: name, id, ...args })
  })
}

/** Runs `fn` and measures how long it takes to settle, giving up waiting after `guardMs`. */
async function timed(fn, guardMs) {
  const t = now()
  let timer
  const guard = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ outcome: 'unsettled', ms: guardMs }), guardMs)
  })
  const call = (async () => {
    try {
      const value = await fn()
      if (value?.fencingToken !== undefined) grants++
      return { outcome: value == null ? 'null' : 'granted', value, ms: now() - t }
    } catch (err) {
      return { outcome: err?.code ?? err?.name ?? 'error', message: String(err?.message).slice(0, 200), ms: now() - t }
    }
  })()
  const res = await Promise.race([call, guard])
  clearTimeout(timer)
  // A call that settles after the guard and grants must not leave the name held.
  if (res.outcome === 'unsettled') {
    call.then((late) => late.value?.release?.().catch(() => {}))
  }
  const { value, ...plain } = res
  return { ...plain, handle: value }
}

const strip = (res) => {
  const { handle: _handle, ...rest } = res
  return rest
}

/** A call's value or its error (code and message), without throwing. */
const settle = (p) =>
  p.then(
    (value) => ({ value }),
    (err) => ({ error: `${err?.code ?? err?.name}: ${String(err?.message).slice(0, 160)}` }),
  )

const scenarios = {
  /**
   * acquire({ timeoutMs }) on a busy name over a slow link settles by timeoutMs + slack.
   * (The holder connects directly; the caller through the proxy, delayed by the runner.)
   */
  async 'budget-delay'() {
    const holder = provider(cfg.direct)
    const caller = provider(cfg.proxied)
    const held = await got(holder.createLock(cfg.name).acquire({ timeoutMs: 5_000 }))
    const warm = await got(caller.createLock(`${cfg.name}:warm`).acquire({ timeoutMs: 5_000 }))
    await warm.release()
    await fault('delay', { ms: cfg.delayMs })
    const acquire = await timed(() => caller.createLock(cfg.name).acquire({ timeoutMs: cfg.timeoutMs }), 5_000)
    await fault('pass')
    await held.release()
    return { acquire: strip(acquire) }
  },

  /**
   * Over a partition (proxy blackhole after the connection is up) tryAcquire, acquire({ timeoutMs })
   * and release each settle within their bounds.
   */
  async 'budget-blackhole'() {
    const holder = provider(cfg.direct)
    const caller = provider(cfg.proxied)
    const held = await got(holder.createLock(cfg.name).acquire({ timeoutMs: 5_000 }))
    const mine = await got(caller.createLock(`${cfg.name}:mine`).acquire({ timeoutMs: 5_000 }))
    await fault('blackhole')
    const [tryAcquire, acquire, release] = await Promise.all([
      timed(() => caller.createLock(`${cfg.name}:free`).tryAcquire(), 8_000),
      timed(() => caller.createLock(cfg.name).acquire({ timeoutMs: cfg.timeoutMs }), 5_000),
      timed(() => mine.release(), 8_000),
    ])
    await fault('reset-then-pass')
    tryAcquire.handle?.release?.().catch(() => {})
    acquire.handle?.release?.().catch(() => {})
    await held.release()
    return { tryAcquire: strip(tryAcquire), acquire: strip(acquire), release: strip(release) }
  },

  /** A server that accepts connections and never answers (blackholed from the start). */
  async 'budget-never-answers'() {
    // The server itself works: a direct client is granted.
    const direct = provider(cfg.direct)
    await (await got(direct.createLock(`${cfg.name}:direct`).acquire({ timeoutMs: 5_000 }))).release()
    await fault('blackhole')
    const caller = provider(cfg.proxied)
    const tryAcquire = await timed(() => caller.createLock(`${cfg.name}:try`).tryAcquire(), 8_000)
    const acquire = await timed(() => caller.createLock(cfg.name).acquire({ timeoutMs: cfg.timeoutMs }), 5_000)
    await fault('reset-then-pass')
    return { tryAcquire: strip(tryAcquire), acquire: strip(acquire) }
  },

  /**
   * A waiter with a long budget rides out a transient fault (the runner's `cfg.fault`) and is
   * granted once the holder releases.
   */
  async 'ride-out'() {
    const holder = provider(cfg.direct)
    const waiterProvider = provider(cfg.proxied ?? cfg.direct)
    const held = await got(holder.createLock(cfg.name).acquire({ timeoutMs: 5_000 }))
    const waiting = timed(() => waiterProvider.createLock(cfg.name).acquire({ timeoutMs: 60_000 }), 20_000)
    await sleep(300)
    await fault(cfg.fault)
    await sleep(200)
    await timed(() => held.release(), 5_000)
    const t = now()
    const waiter = await waiting
    const afterFaultMs = now() - t
    await waiter.handle?.release?.().catch(() => {})
    return { waiter: strip(waiter), grantedAfterFaultMs: waiter.outcome === 'granted' ? afterFaultMs : null }
  },

  /**
   * Acquires sent while the server is stopped fail or time out; once the server resumes, no name
   * stays held by nobody for longer than `cfg.orphanBoundMs`.
   */
  async 'no-orphans'() {
    const caller = provider(cfg.direct)
    const names = Array.from({ length: 5 }, (_, i) => `${cfg.name}:${i}`)
    // Connected first, so the calls below are in flight on open connections.
    const warm = await got(caller.createLock(`${cfg.name}:warm`).acquire({ timeoutMs: 5_000 }))
    await warm.release()
    // Loops acquire and release on every name, so calls are on the wire when the servers stop.
    const run = { stopping: false }
    const loops = names.map(async (n, i) => {
      const seen = []
      for (let k = 0; k < 10_000 && !run.stopping; k++) {
        const res = await timed(
          () => (i % 2 ? caller.createLock(n).tryAcquire() : caller.createLock(n).acquire({ timeoutMs: 1_500 })),
          5_000,
        )
        if (res.outcome !== 'granted' && res.outcome !== 'null') {
          seen.push(strip(res))
          break
        }
        const rel = await timed(() => res.handle?.release(), 5_000)
        if (rel.outcome !== 'null') {
          seen.push({ ...strip(rel), outcome: `release ${rel.outcome}` })
          break
        }
      }
      return seen
    })
    await sleep(300)
    await fault('sigstop')
    run.stopping = true
    const calls = (await Promise.all(loops)).flat()
    await fault('sigcont')
    const fresh = provider(cfg.direct)
    const after = await Promise.all(
      names.map(async (n) => {
        const res = await timed(
          () => fresh.createLock(n).acquire({ timeoutMs: cfg.orphanBoundMs }),
          cfg.orphanBoundMs + 5_000,
        )
        await res.handle?.release?.().catch(() => {})
        return strip(res)
      }),
    )
    return { during: calls, after }
  },

  /**
   * `cfg.cycles` partitions that heal (proxy blackhole for `cfg.partitionMs`, then pass, no
   * reset), each with calls of the proxied provider in flight: a held lock, an acquire waiting
   * for the direct client's lock, a release, and a tryAcquire every 100 ms (so the event loop's
   * connection notices the silence early). After each heal: how long until an acquire of a free
   * name is granted, whether the held lock was confirmed, whether the waiting acquire was granted.
   */
  async 'heal-cycles'() {
    const other = provider(cfg.direct)
    const caller = provider(cfg.proxied, { serverTimeoutMs: cfg.serverTimeoutMs })
    await (await got(caller.createLock(`${cfg.name}:warm`).acquire({ timeoutMs: 5_000 }))).release()
    const heals = []
    for (let k = 0; k < cfg.cycles; k++) {
      const name = (what) => `${cfg.name}:${what}:${k}`
      const taken = await settle(
        Promise.all([
          got(caller.createLock(name('held')).acquire({ timeoutMs: 5_000 })),
          got(caller.createLock(name('released')).acquire({ timeoutMs: 5_000 })),
          got(other.createLock(name('busy')).acquire({ timeoutMs: 5_000 })),
        ]),
      )
      if (taken.error) {
        // The provider is stuck since the last heal: say so, and go on with the next cycle.
        heals.push({ k, firstGrantMs: null, error: `before the partition: ${taken.error}`, held: '-', pending: '-' })
        await sleep(cfg.passMs)
        continue
      }
      const [held, releasing, busy] = taken.value
      const pending = settle(got(caller.createLock(name('busy')).acquire({ timeoutMs: 3 * cfg.partitionMs })))
      await sleep(20)
      await fault('blackhole')
      const started = now()
      const release = settle(releasing.release())
      const tries = []
      for (let i = 0; now() - started < cfg.partitionMs && i < 1_000; i++) {
        tries.push(settle(got(caller.createLock(name(`try-${i}`)).tryAcquire())))
        await sleep(100)
      }
      await fault('pass')
      const healed = now()
      await busy.release()
      const first = await settle(got(caller.createLock(name('free')).acquire({ timeoutMs: 3 * cfg.boundMs })))
      const heal = { k, firstGrantMs: first.value ? now() - healed : null, error: first.error }
      await first.value?.release()
      const until = now() + cfg.boundMs
      while (!held.isHeld && !held.signal.aborted && now() < until) await sleep(10)
      heal.held = held.isHeld ? 'confirmed' : held.signal.aborted ? 'lost' : 'in doubt'
      const waited = await pending
      heal.pending = waited.value ? 'granted' : waited.error
      await waited.value?.release()
      await release
      for (const t of await Promise.all(tries)) await t.value?.release().catch(() => {})
      await held.release().catch(() => {})
      heals.push(heal)
      // The rest of the pass, before the next partition.
      await sleep(Math.max(0, healed + cfg.passMs - now()))
    }
    return { heals }
  },

  /** After a handle's lost signal fires, the same process re-acquires the name without release(). */
  async 'lost-frees-name'() {
    const p = provider(cfg.direct)
    const h = await got(p.createLock(cfg.name).acquire({ timeoutMs: 5_000 }))
    const lost = new Promise((resolve) => h.signal.addEventListener('abort', () => resolve(now()), { once: true }))
    const t = now()
    await fault(cfg.fault)
    const lostAt = await Promise.race([lost, sleep(5_000).then(() => null)])
    if (lostAt == null) return { lost: false }
    const again = await timed(() => p.createLock(cfg.name).acquire({ timeoutMs: 2_000 }), 5_000)
    await again.handle?.release?.().catch(() => {})
    await h.release().catch(() => {})
    return { lost: true, lostAfterMs: lostAt - t, reacquire: strip(again) }
  },
}

let result
try {
  const run = scenarios[cfg.scenario]
  if (!run) throw new Error(`unknown scenario ${cfg.scenario}`)
  result = { ...(await run()), grants }
} catch (err) {
  result = { error: String(err?.stack ?? err).slice(0, 1000) }
}
await Promise.race([Promise.all(providers.map((p) => p.close().catch(() => {}))), sleep(5_000)])
process.send({ result }, () => process.exit(0))
