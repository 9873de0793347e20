// A reader-writer lock around a shared configuration file: three reader processes read it
// often, under read locks that many can hold at once; one writer process replaces it now and
// then, under the write lock, which waits for the readers to leave and holds new ones back
// (writer preference) so a steady stream of readers cannot starve it. Marker files in a shared
// directory show who is inside: readers overlap, and nobody is inside with the writer.
//
//   node examples/reader-writer.mjs
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { makeProvider } from './provider.mjs'

const READERS = ['r1', 'r2', 'r3']
const LOOPS_PER_READER = 2 // concurrent read loops in each reader process
const READS_PER_LOOP = 10
const WRITES = 5
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const [role, id, dir] = process.argv.slice(2)
/** Who is inside now: the marker files. */
const inside = () => readdirSync(join(dir, 'inside'))

if (role === 'reader') {
  const provider = makeProvider()
  const config = provider.createReaderWriterLock('example-config')
  let mostReaders = 0
  let withWriter = 0
  const loop = async (n) => {
    for (let i = 0; i < READS_PER_LOOP; i++) {
      await config.withReadLock(
        async () => {
          const marker = join(dir, 'inside', `reader-${id}-${n}`)
          writeFileSync(marker, '')
          await sleep(10) // reading the configuration
          const present = inside()
          mostReaders = Math.max(mostReaders, present.filter((f) => f.startsWith('reader-')).length)
          if (present.includes('writer')) withWriter++
          JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
          rmSync(marker)
        },
        { timeoutMs: 30_000 },
      )
    }
  }
  await Promise.all(Array.from({ length: LOOPS_PER_READER }, (_, n) => loop(n)))
  console.log(JSON.stringify({ reads: LOOPS_PER_READER * READS_PER_LOOP, mostReaders, withWriter }))
  await provider.close()
} else if (role === 'writer') {
  const provider = makeProvider()
  const config = provider.createReaderWriterLock('example-config')
  let withOthers = 0
  for (let version = 2; version < 2 + WRITES; version++) {
    await sleep(30) // time between configuration changes
    await config.withWriteLock(
      async () => {
        const marker = join(dir, 'inside', 'writer')
        writeFileSync(marker, '')
        if (inside().length > 1) withOthers++ // a reader (or another writer) is inside too
        writeFileSync(join(dir, 'config.next'), JSON.stringify({ version }))
        await sleep(10)
        renameSync(join(dir, 'config.next'), join(dir, 'config.json'))
        if (inside().length > 1) withOthers++
        rmSync(marker)
      },
      { timeoutMs: 30_000 },
    )
  }
  console.log(JSON.stringify({ writes: WRITES, withOthers }))
  await provider.close()
} else {
  const shared = mkdtempSync(join(tmpdir(), 'distlock-rw-'))
  writeFileSync(join(shared, 'config.json'), JSON.stringify({ version: 1 }))
  mkdirSync(join(shared, 'inside'))
  const script = fileURLToPath(import.meta.url)
  const run = (r, w) =>
    new Promise((resolve, reject) => {
      let out = ''
      const child = spawn(process.execPath, [script, r, w, shared], { stdio: ['ignore', 'pipe', 'inherit'] })
      child.stdout.on('data', (d) => (out += d))
      child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`${w} exited ${code}`))))
    })
  const [writer, ...readers] = await Promise.all([run('writer', 'w'), ...READERS.map((r) => run('reader', r))])
  const reads = readers.reduce((sum, r) => sum + r.reads, 0)
  const mostReaders = Math.max(...readers.map((r) => r.mostReaders))
  const readsWithWriter = readers.reduce((sum, r) => sum + r.withWriter, 0)
  const { version } = JSON.parse(readFileSync(join(shared, 'config.json'), 'utf8'))
  rmSync(shared, { recursive: true })
  console.log(`${reads} reads, ${writer.writes} writes, config version ${version}`)
  console.log(`most readers inside at once: ${mostReaders}`)
  console.log(
    `reads that saw the writer inside: ${readsWithWriter}; writes that saw anyone else inside: ${writer.withOthers}`,
  )
  if (mostReaders < 2 || readsWithWriter !== 0 || writer.withOthers !== 0 || version !== 1 + WRITES) process.exit(1)
}
