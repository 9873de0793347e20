#!/usr/bin/env node
// The house rules that a reader of the tree can check without running anything (CONTRIBUTING.md,
// "The floors"): no source file in crates/*/src or ts/ over 800 lines, no import circles between
// the modules of a crate or between the TS files, and backend crates depending only on core.
// Prints what it found; exits 1 when a rule is broken. `--report` prints the numbers and never
// fails (for issue notes: lines per crate, the largest files).
import { readFileSync, readdirSync, statSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const MAX_LINES = 800
const report = process.argv.includes('--report')

function walk(dir, ext) {
  const out = []
  for (const name of readdirSync(dir)) {
    const full = path.join(dir, name)
    if (statSync(full).isDirectory()) out.push(...walk(full, ext))
    else if (name.endsWith(ext)) out.push(full)
  }
  return out
}

const lines = (file) => readFileSync(file, 'utf8').split('\n').length - 1
const rel = (file) => path.relative(root, file)

/** The module path of a Rust source file inside its crate's src/, e.g. `machine::waiter`. */
function rustModule(src, file) {
  const parts = path.relative(src, file).replace(/\.rs$/, '').split(path.sep)
  if (parts.at(-1) === 'mod' || parts.at(-1) === 'lib' || parts.at(-1) === 'main') parts.pop()
  return parts.join('::')
}

/** The crate-local modules a Rust file names through `crate::` or `super::` paths. */
function rustImports(text, self, known) {
  const found = new Set()
  // Test modules may use anything; they are not part of the import graph.
  const code = text.split(/#\[cfg\(test\)\]\s*mod tests/)[0]
  for (const m of code.matchAll(/\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)/g)) {
    let base = m[1] === 'crate' ? [] : self.split('::').slice(0, -1)
    const segs = m[2].split('::').filter(Boolean)
    // The longest prefix that is a module of the crate.
    for (let n = segs.length; n > 0; n--) {
      const target = [...base, ...segs.slice(0, n)].join('::')
      if (known.has(target)) {
        if (target !== self && !self.startsWith(`${target}::`)) found.add(target)
        break
      }
    }
  }
  return found
}

/** The circles in a directed graph (`Map<node, Set<node>>`), each as a list of nodes. */
function circles(graph) {
  const out = []
  const state = new Map()
  const stack = []
  const visit = (n) => {
    state.set(n, 1)
    stack.push(n)
    for (const m of graph.get(n) ?? []) {
      if (state.get(m) === 1) out.push([...stack.slice(stack.indexOf(m)), m])
      else if (!state.has(m)) visit(m)
    }
    stack.pop()
    state.set(n, 2)
  }
  for (const n of graph.keys()) if (!state.has(n)) visit(n)
  return out
}

const problems = []
const sizes = []

// Rust crates.
const cratesDir = path.join(root, 'crates')
const crateLines = {}
for (const crate of readdirSync(cratesDir)) {
  const src = path.join(cratesDir, crate, 'src')
  const files = walk(src, '.rs')
  const modules = new Map(files.map((f) => [rustModule(src, f), f]))
  const known = new Set(modules.keys())
  const graph = new Map()
  crateLines[crate] = 0
  for (const [mod, file] of modules) {
    const n = lines(file)
    crateLines[crate] += n
    sizes.push([rel(file), n])
    graph.set(mod, rustImports(readFileSync(file, 'utf8'), mod, known))
  }
  for (const c of circles(graph)) problems.push(`import circle in crates/${crate}: ${c.join(' -> ')}`)
  const manifest = readFileSync(path.join(cratesDir, crate, 'Cargo.toml'), 'utf8')
  const deps = manifest.split(/^\[dev-dependencies\]/m)[0]
  for (const m of deps.matchAll(/^(distlock-[a-z]+)\s*=/gm)) {
    if (crate !== 'node' && m[1] !== 'distlock-core')
      problems.push(`crates/${crate} depends on ${m[1]}: backends depend only on core`)
  }
}

// The TS layer.
const tsDir = path.join(root, 'ts')
const tsGraph = new Map()
for (const file of walk(tsDir, '.ts')) {
  const n = lines(file)
  sizes.push([rel(file), n])
  // Type-only imports count: a circle of types is still two files that cannot be read apart.
  const deps = new Set()
  for (const m of readFileSync(file, 'utf8').matchAll(/^(?:import|export)[^'"]*?from\s+['"](\.{1,2}\/[^'"]+)['"]/gm)) {
    deps.add(path.resolve(path.dirname(file), m[1].replace(/\.js$/, '').concat('.ts')))
  }
  tsGraph.set(file, deps)
}
for (const c of circles(tsGraph)) problems.push(`import circle in ts/: ${c.map(rel).join(' -> ')}`)

for (const [file, n] of sizes) {
  if (n > MAX_LINES && (file.includes('/src/') || file.startsWith('ts/')))
    problems.push(`${file} has ${n} lines (at most ${MAX_LINES})`)
}

if (report) {
  console.log('lines per crate (src/):')
  for (const [crate, n] of Object.entries(crateLines).toSorted((a, b) => b[1] - a[1]))
    console.log(`  ${crate.padEnd(10)} ${n}`)
  console.log('largest files:')
  for (const [file, n] of sizes.toSorted((a, b) => b[1] - a[1]).slice(0, 12))
    console.log(`  ${String(n).padStart(5)} ${file}`)
}
for (const p of problems) console.log(p)
if (problems.length === 0)
  console.log('house rules kept: no file over 800 lines, no import circles, backends depend only on core')
if (problems.length > 0 && !report) process.exit(1)
