// The code blocks of a Markdown file, and how the doc specs run or type-check them. Every fenced
// block carries a mark on the line above it, an HTML comment that says what the tests do with it:
//
//   <!-- run: file -->       js/ts: run with Node (ts is transpiled first); sh: run with sh
//   <!-- run: memory -->     the same (a block on the in-memory provider)
//   <!-- run: postgres -->   the same, with DATABASE_URL set to the test server
//   <!-- run: redis -->      the same, with REDIS_URL set to a redis-server the spec started
//   <!-- run: custom ID -->  run by a test of its own in the spec, which names ID
//   <!-- typecheck -->       ts only: type-checked, not run (it needs a remote host)
//   <!-- shell -->           sh only: syntax-checked, not run (an install, the test command itself)
//   <!-- text -->            not code (a synopsis, a config file in another language)
//
// Every TypeScript block is type-checked, whatever its mark. A block without a mark, or with a
// mark its language cannot have, fails the spec.
import { spawn, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { delimiter, dirname, join, relative, resolve } from 'node:path'

import ts from 'typescript'
import { expect, it } from 'vitest'

import { ROOT, tempDir, typecheck } from './helpers'

export type Backend = 'file' | 'memory' | 'postgres' | 'redis'

export interface Block {
  /** The Markdown file, relative to the repository. */
  file: string
  /** The line of the opening fence (1-based). */
  line: number
  /** The language, normalised: `js`, `ts`, `sh`, or as written. */
  lang: string
  code: string
  /** The mark's text (`run: file`, `typecheck`, …), or `''` when there is none. */
  mark: string
}

const LANGS: Record<string, string> = {
  js: 'js',
  mjs: 'js',
  javascript: 'js',
  ts: 'ts',
  mts: 'ts',
  typescript: 'ts',
  sh: 'sh',
  bash: 'sh',
  shell: 'sh',
}

/** The fenced code blocks of `file` (relative to the repository), with their marks. */
export function parseBlocks(file: string): Block[] {
  const lines = readFileSync(join(ROOT, file), 'utf8').split('\n')
  const blocks: Block[] = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,})\s*([\w-]*)\s*$/.exec(lines[i])
    if (!open) continue
    const [, indent, fence, lang] = open
    let end = i + 1
    while (end < lines.length && lines[end].trim() !== fence) end++
    if (end === lines.length) throw new Error(`${file}:${i + 1}: a code fence that is never closed`)
    let above = i - 1
    while (above >= 0 && lines[above].trim() === '') above--
    const mark = above >= 0 ? /^\s*<!--\s*(.*?)\s*-->\s*$/.exec(lines[above])?.[1] : undefined
    blocks.push({
      file,
      line: i + 1,
      lang: LANGS[lang.toLowerCase()] ?? lang.toLowerCase(),
      code: lines
        .slice(i + 1, end)
        .map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l))
        .join('\n'),
      mark: mark ?? '',
    })
    i = end
  }
  return blocks
}

/** What a mark asks for, or a reason it is not allowed on the block. */
export function markOf(
  block: Block,
): { run: Backend } | { custom: string } | { typecheck: true } | { shell: true } | { text: true } | { error: string } {
  const where = `${block.file}:${block.line} (${block.lang || 'no language'})`
  const run = /^run:\s*(file|memory|postgres|redis)$/.exec(block.mark)
  const custom = /^run:\s*custom\s+([\w-]+)$/.exec(block.mark)
  const code = ['js', 'ts', 'sh'].includes(block.lang)
  if (run && code) return { run: run[1] as Backend }
  if (custom && code) return { custom: custom[1] }
  if (block.mark === 'typecheck' && block.lang === 'ts') return { typecheck: true }
  if (block.mark === 'shell' && block.lang === 'sh') return { shell: true }
  if (block.mark === 'text' && !code) return { text: true }
  if (block.mark === '') return { error: `${where} has no mark (<!-- run: file --> and so on) on the line above it` }
  return { error: `${where}: the mark "${block.mark}" does not fit a ${block.lang || 'plain'} block` }
}

/** Every block's mark problem, for `expect(markProblems(blocks)).toEqual([])`. */
export function markProblems(blocks: Block[]): string[] {
  return blocks.flatMap((b) => {
    const m = markOf(b)
    return 'error' in m ? [m.error] : []
  })
}

/** Type-checks every TypeScript block of `blocks` as a user's strict project would. */
export function typecheckBlocks(tag: string, blocks: Block[]): { status: number | null; output: string } {
  const files = blocks
    .filter((b) => b.lang === 'ts')
    .map((b, i) => {
      // `readme-*.mts` is gitignored and left out of the repository's own type check.
      const path = join(ROOT, '__test__', 'types', `readme-${tag}-${i}.mts`)
      writeFileSync(path, `// Extracted from ${b.file}:${b.line} by the doc specs\n${b.code}\nexport {}\n`)
      return path
    })
  if (files.length === 0) return { status: 0, output: '' }
  // As strict as a user's project may be: an explicit `undefined` where an option is optional.
  return typecheck(files, 'node16', 'node16', { extra: ['--exactOptionalPropertyTypes'] })
}

/**
 * An app directory where distlock is installed (links to this checkout, its `npx distlock`,
 * esbuild and @opentelemetry/api), with the files the README's commands name: `app.js`,
 * `report.js` and a copy of `examples/opentelemetry.mjs`.
 */
export function project(): string {
  const dir = tempDir('docs')
  const modules = join(dir, 'node_modules')
  mkdirSync(join(modules, '.bin'), { recursive: true })
  symlinkSync(ROOT, join(modules, 'distlock'), 'dir')
  symlinkSync(join(ROOT, 'node_modules', '@opentelemetry'), join(modules, '@opentelemetry'), 'dir')
  symlinkSync(join(ROOT, 'node_modules', 'esbuild'), join(modules, 'esbuild'), 'dir')
  symlinkSync(join(ROOT, 'bin', 'distlock.js'), join(modules, '.bin', 'distlock'))
  symlinkSync(join(ROOT, 'node_modules', 'esbuild', 'bin', 'esbuild'), join(modules, '.bin', 'esbuild'))
  writeFileSync(
    join(dir, 'app.js'),
    [
      "const { FileLockProvider } = require('distlock')",
      'const locks = new FileLockProvider()',
      "locks.createLock('app')",
      '  .withLock(async (handle) => console.log(`app holds ${handle.name}, token ${handle.fencingToken}`))',
      '  .finally(() => locks.close())',
      '',
    ].join('\n'),
  )
  writeFileSync(
    join(dir, 'report.js'),
    'console.log(`report under ${process.env.DISTLOCK_LOCK_NAME}, token ${process.env.DISTLOCK_FENCING_TOKEN}`)\n',
  )
  for (const f of ['opentelemetry.mjs', 'opentelemetry.d.mts']) copyFileSync(join(ROOT, 'examples', f), join(dir, f))
  return dir
}

/** Where the servers of the `postgres` and `redis` marks are. */
export interface Servers {
  postgres?: string
  redis?: string
}

export interface Run {
  status: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** JavaScript for Node from a js or ts block (ts is transpiled, types dropped). */
export function javascript(block: Block): string {
  if (block.lang !== 'ts') return block.code
  return ts.transpileModule(block.code, {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  }).outputText
}

/** The command and environment that run `block` in a fresh project against `backend` (plus `extra` in its environment). */
export function command(
  block: Block,
  backend: Backend,
  servers: Servers,
  extra: Record<string, string> = {},
): { cmd: string; args: string[]; cwd: string; env: NodeJS.ProcessEnv } {
  const cwd = project()
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TMPDIR: tempDir('docs-tmp'), // the file backend's default directory lives in os.tmpdir()
    PATH: `${join(cwd, 'node_modules', '.bin')}${delimiter}${process.env.PATH ?? ''}`,
    npm_config_offline: 'true', // `npx distlock` and `npx esbuild` must find the local bins
    npm_config_update_notifier: 'false',
  }
  delete env.DATABASE_URL
  delete env.REDIS_URL
  delete env.NODE_DEBUG
  if (backend === 'postgres') {
    if (!servers.postgres) throw new Error(`${block.file}:${block.line} needs PostgreSQL and the spec has none`)
    env.DATABASE_URL = servers.postgres
  }
  if (backend === 'redis') {
    if (!servers.redis) throw new Error(`${block.file}:${block.line} needs Redis and the spec started none`)
    env.REDIS_URL = servers.redis
  }
  Object.assign(env, extra)
  if (block.lang === 'sh') return { cmd: 'sh', args: ['-e', '-c', block.code], cwd, env }
  return { cmd: process.execPath, args: ['--input-type=module', '-e', javascript(block)], cwd, env }
}

/** Runs `block` (bounded by `timeoutMs`) and collects its output. */
export function runBlock(
  block: Block,
  backend: Backend,
  servers: Servers,
  { timeoutMs = 30_000, env: extra = {} }: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<Run> {
  const { cmd, args, cwd, env } = command(block, backend, servers, extra)
  return new Promise((done, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', reject)
    child.on('close', (status, signal) => {
      clearTimeout(timer)
      done({ status, signal, stdout, stderr })
    })
  })
}

/** `sh -n`: whether a `shell` block parses. */
export function shellSyntax(block: Block): { status: number | null; output: string } {
  const res = spawnSync('sh', ['-n', '-c', block.code], { encoding: 'utf8', timeout: 10_000 })
  return { status: res.status, output: res.stdout + res.stderr }
}

/** A readable name for a block in test titles. */
export function title(block: Block): string {
  const first = block.code.split('\n').find((l) => l.trim() !== '' && !l.startsWith('//') && !l.startsWith('import'))
  return `${block.file}:${block.line} ${block.lang} (${block.mark}): ${(first ?? '').trim().slice(0, 60)}`
}

/** GitHub's anchor for a heading. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, '')
    .replace(/ /g, '-')
}

/** The anchors of a Markdown file's headings. */
function anchors(path: string): Set<string> {
  const text = readFileSync(path, 'utf8').replace(/^(\s*)(`{3,})[\s\S]*?^\1\2\s*$/gm, '')
  return new Set([...text.matchAll(/^#{1,6}\s+(.+)$/gm)].map((m) => slug(m[1])))
}

/**
 * Links of `file` that lead nowhere: a relative link must name a file of the repository that
 * exists (and a heading of it, with `#anchor`); anything else must be a public `https:` URL.
 */
export function linkProblems(file: string): string[] {
  const path = join(ROOT, file)
  const text = readFileSync(path, 'utf8').replace(/^(\s*)(`{3,})[\s\S]*?^\1\2\s*$/gm, '')
  const targets = [...text.matchAll(/\]\(([^)\s]+)\)|<(https?:[^>\s]+)>/g)].map((m) => m[1] ?? m[2])
  const problems: string[] = []
  for (const target of targets) {
    if (target.startsWith('https://')) {
      if (/localhost|127\.0\.0\.1|\.internal\b/.test(target)) problems.push(`${file}: ${target} is not public`)
      continue
    }
    if (/^[a-z]+:/.test(target)) {
      problems.push(`${file}: ${target} is neither relative nor https`)
      continue
    }
    const [rel, anchor] = target.split('#')
    const dest = rel === '' ? path : resolve(dirname(path), rel)
    if (relative(ROOT, dest).startsWith('..')) {
      problems.push(`${file}: ${target} leaves the repository`)
      continue
    }
    if (!existsSync(dest)) {
      problems.push(`${file}: ${target} does not exist`)
      continue
    }
    if (anchor && dest.endsWith('.md') && !anchors(dest).has(anchor)) {
      problems.push(`${file}: ${target} names no heading of ${relative(ROOT, dest)}`)
    }
  }
  return problems
}

/**
 * Declares a test for every block the spec runs as it is (`run: file|memory|postgres|redis`) or
 * parses (`shell`): a run must exit 0, and its output must match what `expected` gives for it.
 * `servers` is read when the tests run (a spec fills it in `beforeAll`).
 */
export function blockTests(
  blocks: Block[],
  servers: Servers,
  expected: (block: Block) => Array<['stdout' | 'stderr', RegExp]>,
): void {
  for (const block of blocks) {
    const mark = markOf(block)
    if ('run' in mark) {
      it(`runs ${title(block)}`, async () => {
        const run = await runBlock(block, mark.run, servers)
        expect(run.status, `${run.stdout}\n${run.stderr}`).toBe(0)
        for (const [stream, re] of expected(block)) expect(run[stream]).toMatch(re)
      })
    } else if ('shell' in mark) {
      it(`parses ${title(block)}`, () => {
        const { status, output } = shellSyntax(block)
        expect(status, output).toBe(0)
      })
    }
  }
}
