// The guides in docs/ (migration from the JS libraries, choosing a backend, PgBouncer, Redis
// Cluster and Sentinel, Kubernetes): every code block carries a mark and runs (or type-checks)
// as its mark says, against servers this spec gets from the lab, lab/ (Redis: one server, three
// for RedLock, a cluster, a sentinel; PostgreSQL found or started). Each migration table
// is checked against the real library (every public export, method, field, option and error
// of it appears in the table's first column) and against distlock (every name its second
// column shows exists on distlock's exports).
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, symlinkSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import ts from 'typescript'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import {
  command,
  linkProblems,
  markOf,
  markProblems,
  parseBlocks,
  title,
  typecheckBlocks,
  type Block,
} from './doc-blocks'
import { ROOT } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

const MIGRATIONS = ['redlock', 'redis-semaphore', 'proper-lockfile', 'advisory-lock', 'async-mutex'].map(
  (m) => `docs/migration/${m}.md`,
)
const GUIDES = ['choosing-a-backend', 'postgres-pgbouncer', 'redis-cluster-sentinel', 'kubernetes'].map(
  (g) => `docs/${g}.md`,
)
const DOCS = [...MIGRATIONS, ...GUIDES]
const blocks = DOCS.flatMap((file) => parseBlocks(file))

/** What each runnable block of a file prints, in the file's order. */
const PRINTS: Record<string, RegExp[]> = {
  'docs/migration/redlock.md': [
    /^redlock 5 ran the report$/m,
    /^redlock 4 holds \[ 'report:daily' \]$/m,
    /^distlock ran the report with fencing token \d+n$/m,
    /^held on a majority of 3 servers until release$/m,
    /^redlock while distlock holds: LockError\ndistlock while redlock holds: null$/m,
  ],
  'docs/migration/redis-semaphore.md': [
    /^redis-semaphore holds true$/m,
    /^distlock holds true$/m,
    /^redis-semaphore granted 2 of 3$/m,
    /^distlock granted 2 of 3$/m,
    /^redis-semaphore while distlock holds: false\ndistlock while redis-semaphore holds: null$/m,
  ],
  'docs/migration/proper-lockfile.md': [
    /^proper-lockfile holds true$/m,
    /^distlock holds true token \d+n$/m,
    /^held: true$/m,
  ],
  'docs/migration/advisory-lock.md': [
    /^advisory-lock ran the import\nadvisory-lock tryLock: function$/m,
    /^distlock ran the import with fencing token \d+n\ndistlock tryAcquire: LockHandle$/m,
    /^advisory-lock while distlock holds: undefined\ndistlock while advisory-lock holds: null$/m,
  ],
  'docs/migration/async-mutex.md': [
    /^async-mutex: \[ 'value of a', 'value of a' \]$/m,
    /^distlock: \[ 'value of a', 'value of a' \]$/m,
    /^async-mutex: free 0 cancelled true$/m,
    /^distlock: free 0 cancelled true$/m,
  ],
  'docs/choosing-a-backend.md': [/^B writes: true\nA writes late: false$/m],
  'docs/postgres-pgbouncer.md': [/^held 2 locks on [2-5] connections$/m],
  'docs/redis-cluster-sentinel.md': [
    /^cluster: lock token \d+n and a semaphore permit semaphore$/m,
    /^sentinel: held on the master, token \d+n$/m,
  ],
  'docs/kubernetes.md': [/^pod-a leads with fencing token (\d+)\npod-b leads with fencing token (\d+)$/m],
}

/** The packages the "before" snippets import, linked into each block's project. */
const PACKAGES = ['ioredis', 'redlock', 'redis-semaphore', 'proper-lockfile', 'advisory-lock', 'async-mutex', 'pg']

let services: Services
const urls: { redis?: string; redlock?: string[]; cluster?: string; sentinel?: string; postgres?: string } = {}

beforeAll(async () => {
  services = await import('../lab/index.mjs')
  const [one, two, three, master] = await Promise.all([
    services.startRedis(),
    services.startRedis(),
    services.startRedis(),
    services.startRedis(),
  ])
  urls.redis = one.url
  urls.redlock = [one.url, two.url, three.url]
  urls.sentinel = (await services.startSentinel(master.port)).url
  urls.cluster = (await services.startRedisCluster()).url
  urls.postgres = (await services.findPostgres()).url
}, 60_000)

afterAll(() => services?.stopServices())

/** Runs `block` in a fresh project with distlock and the "before" libraries installed. */
function run(block: Block): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const mark = markOf(block)
  const backend = 'run' in mark ? mark.run : 'file'
  const custom = 'custom' in mark ? mark.custom : undefined
  const { cmd, args, cwd, env } = command(block, backend, { postgres: urls.postgres, redis: urls.redis })
  const modules = join(cwd, 'node_modules')
  for (const pkg of PACKAGES) {
    const target = pkg === 'redlock' && custom === 'redlock5' ? 'redlock5' : pkg
    symlinkSync(join(ROOT, 'node_modules', target), join(modules, pkg), 'dir')
  }
  if (custom === 'redlock5') env.REDIS_URL = urls.redis
  else if (custom === 'redlock3') env.REDIS_URLS = urls.redlock!.join(',')
  else if (custom === 'cluster') env.REDIS_URL = urls.cluster
  else if (custom === 'sentinel') env.REDIS_URL = urls.sentinel
  else if (custom !== undefined) throw new Error(`${title(block)}: no runner for "run: custom ${custom}"`)
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 25_000)
    child.on('error', reject)
    child.on('close', (status) => {
      clearTimeout(timer)
      resolve({ status, stdout, stderr })
    })
  })
}

const runnable = (b: Block) => {
  const m = markOf(b)
  return 'run' in m || 'custom' in m
}

describe('docs guides: code blocks', () => {
  it('every block has a mark that fits it, and every link leads somewhere', () => {
    expect(blocks.length).toBeGreaterThan(20)
    expect(markProblems(blocks)).toEqual([])
    expect(DOCS.flatMap((f) => linkProblems(f))).toEqual([])
  })

  it('every runnable block has an expected output, and every migration guide a before and an after', () => {
    for (const file of DOCS) {
      expect(blocks.filter((b) => b.file === file && runnable(b)).length, file).toBe(PRINTS[file]?.length)
    }
    for (const file of MIGRATIONS) {
      const code = blocks.filter((b) => b.file === file && runnable(b)).map((b) => b.code)
      expect(
        code.some((c) => !c.includes("from 'distlock'")),
        `${file}: a before snippet`,
      ).toBe(true)
      expect(
        code.some((c) => c.includes("from 'distlock'")),
        `${file}: an after snippet`,
      ).toBe(true)
    }
  })

  it('the TypeScript blocks type-check as a strict project', () => {
    const { status, output } = typecheckBlocks('guides', blocks)
    expect(status, output).toBe(0)
  }, 60_000)

  for (const file of DOCS) {
    const mine = blocks.filter((b) => b.file === file && runnable(b))
    mine.forEach((block, i) => {
      it(`runs ${title(block)}`, async () => {
        const { status, stdout, stderr } = await run(block)
        expect(status, `${stdout}\n${stderr}`).toBe(0)
        const expected = PRINTS[file]?.[i]
        expect(expected, 'an expected output in PRINTS').toBeDefined()
        expect(stdout).toMatch(expected!)
        if (file === 'docs/kubernetes.md') {
          const [, a, b] = expected!.exec(stdout)!
          expect(BigInt(b)).toBeGreaterThan(BigInt(a))
        }
      })
    })
  }
})

// ---------------------------------------------------------------------------------------------
// The migration tables against the real libraries and against distlock.

const nodeModules = join(ROOT, 'node_modules')
const req = createRequire(join(ROOT, 'package.json'))

/** The rows of every Markdown table of `file`: the cells of each row, header rows left out. */
function tableRows(file: string): string[][] {
  const text = readFileSync(join(ROOT, file), 'utf8').replace(/^```[\s\S]*?^```$/gm, '')
  const rows: string[][] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i].startsWith('|')) continue
    if (/^\|[\s|:-]+\|$/.test(lines[i])) continue
    if (lines[i + 1] !== undefined && /^\|[\s|:-]+\|$/.test(lines[i + 1])) continue // a header
    rows.push(
      lines[i]
        .slice(1, -1)
        .split(/(?<!\\)\|/)
        .map((c) => c.trim()),
    )
  }
  return rows
}

/**
 * The identifiers inside the code spans of `cell`. String literals count (an event name such as
 * `on('error')`) unless `strings` is false.
 */
function identifiers(cell: string, strings = true): string[] {
  return [...cell.matchAll(/`([^`]+)`/g)].flatMap((m) =>
    [...(strings ? m[1] : m[1].replace(/'[^']*'|"[^"]*"/g, '')).matchAll(/[A-Za-z_$][\w$]*/g)].map((x) => x[0]),
  )
}

const isPublic = (name: string) => name !== 'constructor' && !name.startsWith('_')

/** The own property names along `proto`'s chain, up to (not including) `stop`. */
function chainNames(proto: object | null, stop: object[] = [Object.prototype]): string[] {
  const names: string[] = []
  for (let p = proto; p && !stop.includes(p); p = Object.getPrototypeOf(p)) names.push(...Object.getOwnPropertyNames(p))
  return names.filter(isPublic)
}

/** Whether a declaration is the library's own, not Node's (EventEmitter, Error). */
const ownDeclaration = (d: ts.Declaration) => !d.getSourceFile().fileName.includes('/@types/node/')
/** Whether a declaration is neither private nor protected. */
const notPrivate = (d: ts.Declaration) =>
  !(ts.getCombinedModifierFlags(d) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected))

/** A type checker over one declaration file, and its module's exports. */
function declarations(file: string) {
  const program = ts.createProgram([file], { strict: true, types: [], skipLibCheck: true, noEmit: true })
  const checker = program.getTypeChecker()
  const moduleSymbol = checker.getSymbolAtLocation(program.getSourceFile(file)!)!
  const resolve = (s: ts.Symbol) => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s)
  const exports = new Map(checker.getExportsOfModule(moduleSymbol).map((s) => [s.name, resolve(s)]))
  return {
    /** The public members of the class or interface `name` (inherited ones too, not Node's). */
    members(name: string): string[] {
      const symbol = exports.get(name)
      if (!symbol) throw new Error(`${file} exports no ${name}`)
      return checker
        .getPropertiesOfType(checker.getDeclaredTypeOfSymbol(symbol))
        .filter((p) => isPublic(p.name) && (p.declarations ?? []).every((d) => ownDeclaration(d) && notPrivate(d)))
        .filter((p) => !['message', 'name', 'stack', 'cause'].includes(p.name))
        .map((p) => p.name)
    },
    /** The optional parameters of every public function, constructor and method exported. */
    optionalParameters(): string[] {
      const names = new Set<string>()
      const visit = (node: ts.Node) => {
        if (
          (ts.isFunctionDeclaration(node) || ts.isMethodDeclaration(node) || ts.isConstructorDeclaration(node)) &&
          notPrivate(node)
        ) {
          for (const p of node.parameters)
            if (p.questionToken && isPublic(p.name.getText())) names.add(p.name.getText())
        }
        ts.forEachChild(node, visit)
      }
      for (const symbol of exports.values()) for (const d of symbol.declarations ?? []) visit(d)
      return [...names]
    },
  }
}

/** The names of a module's runtime exports; a default export by its own name when it has one. */
function exportNames(mod: Record<string, unknown>): string[] {
  return Object.keys(mod)
    .filter((k) => k !== '__esModule')
    .map((k) => (k === 'default' && typeof mod[k] === 'function' && mod[k].name ? mod[k].name : k))
}

/** `emit('event'` calls in a library's source. */
function emitted(file: string): string[] {
  return [...readFileSync(file, 'utf8').matchAll(/\.emit\(\s*['"](\w+)['"]/g)].map((m) => m[1])
}

/** What each migration guide's first column must name, read from the installed library. */
const LIBRARIES: Record<string, () => string[]> = {
  'docs/migration/redlock.md': () => {
    // v5 (an npm alias of redlock@5.0.0-beta.2)
    const v5 = req('redlock5')
    const v5dts = declarations(join(nodeModules, 'redlock5/dist/index.d.ts'))
    const r5 = new v5.default([{}])
    const lock5 = new v5.Lock(r5, ['r'], 'v', [], 0)
    // v4, whose types come from @types/redlock
    const v4 = req('redlock')
    const r4 = new v4([{}])
    const lock4 = new v4.Lock(r4, 'r', 'v', 0, 0, 0)
    return [
      ...exportNames(v5),
      ...chainNames(v5.default.prototype, [Object.prototype, req('events').EventEmitter.prototype]),
      ...v5dts.members('default'),
      ...Object.keys(r5).filter(isPublic),
      ...Object.keys(r5.settings),
      ...v5dts.members('Settings'),
      ...Object.keys(r5.scripts),
      ...chainNames(v5.Lock.prototype),
      ...Object.keys(lock5),
      ...v5dts.members('Lock'),
      ...emitted(join(nodeModules, 'redlock5/dist/cjs/index.js')),
      ...Object.keys(v4),
      ...chainNames(v4.prototype, [Object.prototype, req('events').EventEmitter.prototype]),
      ...Object.keys(r4).filter(isPublic),
      ...declarations(join(nodeModules, '@types/redlock/index.d.ts')).members('Options'),
      ...chainNames(v4.Lock.prototype),
      ...Object.keys(lock4),
      ...emitted(join(nodeModules, 'redlock/redlock.js')),
    ]
  },
  'docs/migration/redis-semaphore.md': () => {
    const mod = req('redis-semaphore')
    const dts = declarations(join(nodeModules, 'redis-semaphore/lib/index.d.ts'))
    const classes = [
      'Mutex',
      'Semaphore',
      'MultiSemaphore',
      'RedlockMutex',
      'RedlockSemaphore',
      'RedlockMultiSemaphore',
    ]
    const members = classes.flatMap((c) => dts.members(c))
    // The declared members are the runtime ones.
    for (const c of classes) for (const m of dts.members(c)) expect(m in mod[c].prototype, `${c}.${m}`).toBe(true)
    return [...exportNames(mod), ...members, ...dts.members('LockOptions'), ...Object.keys(mod.defaultTimeoutOptions)]
  },
  'docs/migration/proper-lockfile.md': () => {
    const mod = req('proper-lockfile')
    const dts = declarations(join(nodeModules, '@types/proper-lockfile/index.d.ts'))
    const lib = join(nodeModules, 'proper-lockfile/lib')
    const codes = readdirSync(lib)
      .filter((f) => f.endsWith('.js'))
      .flatMap((f) => [...readFileSync(join(lib, f), 'utf8').matchAll(/code: '(E[A-Z]+)'/g)].map((m) => m[1]))
    return [
      ...exportNames(mod),
      ...dts.members('LockOptions'),
      ...dts.members('UnlockOptions'),
      ...dts.members('CheckOptions'),
      ...declarations(join(nodeModules, '@types/retry/index.d.ts')).members('WrapOptions'),
      ...codes,
    ]
  },
  'docs/migration/advisory-lock.md': () => {
    const mod = req('advisory-lock')
    const mutex = mod.default('postgres://nobody@127.0.0.1:1/none')('name') // connects only when used
    return [...exportNames(mod), ...Object.keys(mutex)]
  },
  'docs/migration/async-mutex.md': () => {
    const mod = req('async-mutex')
    const dts = declarations(join(nodeModules, 'async-mutex/lib/index.d.ts'))
    return [
      ...exportNames(mod),
      ...chainNames(mod.Mutex.prototype),
      ...chainNames(mod.Semaphore.prototype),
      ...dts.members('Mutex'),
      ...dts.members('Semaphore'),
      ...dts.optionalParameters(),
    ]
  },
}

/** Names in the second column that are JavaScript, not distlock: placeholders and built-ins. */
const NOT_DISTLOCK = new Set(['fn', 'ms', 'await', 'using', 'null', 'true', 'false', 'new', 'AbortSignal'])

/** Every name distlock's public exports have: exports, members, fields, option keys. */
async function distlockNames(): Promise<Set<string>> {
  const d = req(ROOT)
  const names = new Set<string>(Object.keys(d))
  const add = (xs: Iterable<string>) => {
    for (const x of xs) names.add(x)
  }
  for (const value of Object.values(d)) {
    if (typeof value !== 'function') continue
    add(Object.getOwnPropertyNames(value).filter(isPublic))
    add(chainNames(value.prototype, [Object.prototype, Error.prototype]))
  }
  add(Object.keys(d.channels))
  // Instance fields, from real instances.
  const memory = new d.MemoryLockProvider()
  const lock = memory.createLock('docs-guides')
  const semaphore = memory.createSemaphore('docs-guides', 2)
  const handle = await lock.acquire()
  add([...Object.keys(handle), ...Object.keys(lock), ...Object.keys(semaphore), ...Object.keys(await lock.getInfo())])
  await handle.release()
  const both = await memory.acquireAll(['docs-a', 'docs-b'])
  add(Object.keys(both))
  await both.release()
  const keyed = new d.MemoryDistributedLock({ provider: memory })
  const guard = await keyed.acquire('docs-guides')
  add([...Object.keys(keyed), ...Object.keys(guard)])
  await guard.release()
  add(Object.keys(new d.FileLockProvider({ directory: mkdtempSync(join(tmpdir(), 'distlock-docs-names-')) })))
  const facts = { server: 's', errno: 1, syscall: 'open', path: 'p', sqlState: '28P01', redisError: 'NOAUTH' }
  add(Object.keys(new d.LockBackendError('m', facts)))
  // Option keys, as the strict option check lists them.
  const unknown = { zzzzzzzzzzzzzzzzzzzzzzzzzzzz: 1 }
  const known = async (call: () => unknown) => {
    try {
      await call()
    } catch (err) {
      const listed = /Known properties: (.*)\.$/.exec((err as Error).message)
      if (listed) return add([...listed[1].matchAll(/"(\w+)"/g)].map((m) => m[1]))
    }
    throw new Error(`no list of known options from ${call}`)
  }
  await known(() => new d.FileLockProvider(unknown))
  await known(() => new d.MemoryLockProvider(unknown))
  await known(() => new d.RedisLockProvider({ urls: 'redis://127.0.0.1:1', ...unknown }))
  await known(() => new d.RedisLockProvider({ urls: 'rediss://127.0.0.1:1', tls: unknown }))
  await known(() => new d.PostgresLockProvider({ connectionString: 'postgres://nobody@127.0.0.1:1/none', ...unknown }))
  await known(() => new d.MemoryDistributedLock(unknown))
  await known(() => keyed.acquire('docs-guides', unknown))
  await known(() => lock.tryAcquire(unknown))
  await known(() => semaphore.tryAcquire(unknown))
  await known(() => semaphore.waitForUnlock(unknown))
  await memory.close()
  return names
}

describe('docs guides: migration tables', () => {
  for (const file of MIGRATIONS) {
    it(`${file} names every public export, method, field, option and error of the library`, () => {
      const firstColumn = new Set(tableRows(file).flatMap((row) => identifiers(row[0])))
      const api = [...new Set(LIBRARIES[file]())]
      expect(api.length).toBeGreaterThan(5)
      expect(api.filter((name) => !firstColumn.has(name))).toEqual([])
    })
  }

  it('every distlock name in the second columns exists on distlock', async () => {
    const known = await distlockNames()
    const missing = MIGRATIONS.flatMap((file) =>
      tableRows(file).flatMap((row) =>
        identifiers(row[1] ?? '', false)
          .filter((name) => !known.has(name) && !NOT_DISTLOCK.has(name))
          .map((name) => `${file}: ${name} (in "${row[1]}")`),
      ),
    )
    expect(missing).toEqual([])
  })
})
