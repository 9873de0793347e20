#!/usr/bin/env node
// W1–W4 (DESIGN.md §6) for the etcd backend, against the `etcd3` package's Lock, in one run on one
// etcd member. No floor: no etcd tool runs a plain lock cycle.
//
//   node bench/etcd.mjs [--quick] [--only=id,id] [--reps=N] [--seconds=S] [--endpoints=http://...,http://...]
//
// W1: one loop on one name. W2: 64 loops, each on its own name. W3: 16 loops in one process on
// one name. W4: 4 processes on one name (bench/lib.mjs checks exclusion across them).
// Server: --endpoints, else a private etcd member started here (lab/ startEtcd) and
// stopped at the end.
// etcd3's Lock only tries (a lease, a create-if-absent transaction, and on failure the lease's
// revocation); it is made to wait by retrying every 10 ms ± 10 ms, far tighter than a caller
// would, which only favours it.
import { createRequire } from 'node:module'
import path from 'node:path'

import {
  LOOPS,
  ONLY,
  REPS,
  RUN_S,
  childLoop,
  freshName,
  opt,
  printTable,
  providerLoops,
  root,
  runLoops,
  runProcesses,
  saveResults,
  summarize,
} from './lib.mjs'

const require = createRequire(path.join(root, 'package.json'))
const { Etcd3, EtcdLockFailedError } = require('etcd3')

// Both cases put a lock's key under this prefix, with a 30 s lease.
const PREFIX = 'distlock/'
const LEASE_S = 30
// How long etcd3's retry loop waits for one lock before it gives up.
const GIVE_UP_MS = 120_000

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// A case: make(endpoints, names) -> { loops: [acquire() -> release()], close() }, one loop per name.
const CASES = [
  {
    id: 'distlock',
    label: 'distlock EtcdLockProvider',
    async make(endpoints, names) {
      // Loaded here, so that the other cases run (--only=etcd3) while no build has the provider.
      const { EtcdLockProvider } = require(root)
      if (!EtcdLockProvider) throw new Error('this build of distlock has no EtcdLockProvider (npm run build)')
      return providerLoops(new EtcdLockProvider({ endpoints, leaseMs: LEASE_S * 1000, keyPrefix: PREFIX }), names)
    },
  },
  {
    id: 'etcd3',
    label: 'etcd3 Lock (retry every 10 ms ± 10 ms)',
    async make(endpoints, names) {
      const client = new Etcd3({ hosts: endpoints })
      const ns = client.namespace(PREFIX)
      return {
        loops: names.map((n) => async () => {
          const deadline = performance.now() + GIVE_UP_MS
          for (;;) {
            // A Lock holds one lease: a new one per attempt.
            const lock = ns.lock(n).ttl(LEASE_S)
            try {
              await lock.acquire()
              return () => lock.release()
            } catch (err) {
              if (!(err instanceof EtcdLockFailedError) || performance.now() > deadline) throw err
            }
            await sleep(Math.random() * 20)
          }
        }),
        close: async () => client.close(),
      }
    },
  },
]

// A W4 child: one loop of one case on the shared name.
if (opt('child')) {
  const c = CASES.find((x) => x.id === opt('child'))
  const inst = await c.make(opt('endpoints').split(','), [opt('name')])
  await childLoop(inst.loops[0])
  await inst.close()
  process.exit(0)
}

const services = await import('../lab/index.mjs')
const endpoints = opt('endpoints')?.split(',') ?? [(await services.startEtcd()).endpoint]

const cases = CASES.filter((c) => !ONLY || ONLY.includes(c.id))
const results = []
let server
try {
  for (const w of ['W1', 'W2', 'W3', 'W4']) {
    const reps = new Map(cases.map((c) => [c.id, []]))
    for (let r = 0; r < REPS; r++) {
      for (const c of cases) {
        process.stderr.write(`${w} ${c.id} rep ${r + 1}/${REPS}\n`)
        if (w === 'W4') {
          reps.get(c.id).push(await runProcesses(process.argv[1], c.id, [`--endpoints=${endpoints.join(',')}`]))
          continue
        }
        const shared = freshName(w)
        const names = Array.from({ length: LOOPS[w] }, (_, i) => (w === 'W2' ? `${shared}-${i}` : shared))
        const inst = await c.make(endpoints, names)
        try {
          reps.get(c.id).push(await runLoops(inst, { shared: w !== 'W2' }))
        } finally {
          await inst.close()
        }
      }
    }
    for (const c of cases) results.push(summarize(w, { ...c, group: 'etcd' }, reps.get(c.id)))
  }
  const client = new Etcd3({ hosts: endpoints })
  server = (await client.maintenance.status()).version
  client.close()
} finally {
  services.stopServices()
}

console.log(
  `\netcd ${server} (${endpoints.length} endpoint${endpoints.length > 1 ? 's' : ''}), Node ${process.version}, ${REPS} reps × ${RUN_S} s, medians\n`,
)
printTable(results)
console.log(`\nraw results: ${saveResults('etcd', { server, endpoints: endpoints.length, results })}`)
// etcd3 leaves a 30 s timer behind a revoked lease whose keepalive answer came late (its
// keepalive-timeout debounce is re-armed after the lease's teardown), which would hold the
// process open that long.
process.exit(0)
