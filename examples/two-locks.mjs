// Taking two locks in a consistent order to avoid deadlock: transfers between two accounts run
// in both directions at once. Each transfer locks both accounts, always in sorted name order,
// so no transfer can hold one account while waiting for the other one's holder.
//
//   node examples/two-locks.mjs
import { makeProvider } from './provider.mjs'

const provider = makeProvider()
const balances = { 'account:alice': 1_000, 'account:bob': 1_000 }

async function transfer(from, to, amount) {
  const [first, second] = [from, to].toSorted() // the consistent order
  const a = await provider.createLock(first).acquire({ timeoutMs: 10_000 })
  try {
    const b = await provider.createLock(second).acquire({ timeoutMs: 10_000 })
    try {
      const before = balances[from]
      await new Promise((resolve) => setImmediate(resolve)) // a read-modify-write that yields
      balances[from] = before - amount
      balances[to] += amount
    } finally {
      await b.release()
    }
  } finally {
    await a.release()
  }
}

const loops = [
  (async () => {
    for (let i = 0; i < 100; i++) await transfer('account:alice', 'account:bob', 3)
  })(),
  (async () => {
    for (let i = 0; i < 100; i++) await transfer('account:bob', 'account:alice', 2)
  })(),
]
await Promise.all(loops)
await provider.close()
const total = balances['account:alice'] + balances['account:bob']
console.log(
  `200 transfers done, no deadlock; alice ${balances['account:alice']}, bob ${balances['account:bob']}, total ${total}`,
)
if (total !== 2_000 || balances['account:alice'] !== 900) process.exit(1)
