// `npm run pack:check`: proves the user's install path without publishing anything. Packs the
// linux-x64-gnu platform package and the main package the way `napi prepublish` would publish
// them (the main package with optionalDependencies on every platform package), installs both
// into an empty project with no Rust toolchain on PATH, and uses the library there from ESM,
// from CommonJS and through the `distlock` CLI. Also runs publint and attw on the main tarball.
// Needs the addon (`distlock.linux-x64-gnu.node`) and `dist/` built first (`npm install`).
// Usage: node scripts/pack-install.mjs [--keep]   (--keep leaves the temp dirs for a look)
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
// The only target this machine can build; the other seven are built and tested in CI.
const PLATFORM = 'linux-x64-gnu'
const MINUTE = 60_000
const keep = process.argv.includes('--keep')

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
const binary = `${pkg.napi.binaryName}.${PLATFORM}.node`

class StepError extends Error {}
const fail = (message) => {
  throw new StepError(message)
}

/**
 * Runs a command with a timeout and returns its stdout; fails, showing its output, unless it
 * exits with `expectStatus`. With `expectStatus: null` any exit passes and the whole result is
 * returned.
 */
function run(cmd, args, { cwd = ROOT, env = process.env, timeout = 2 * MINUTE, expectStatus = 0 } = {}) {
  const res = spawnSync(cmd, args, { cwd, env, timeout, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
  const shown = `${cmd} ${args.join(' ')}`
  if (res.error?.code === 'ETIMEDOUT') fail(`timed out after ${timeout / 1000}s: ${shown}`)
  if (res.error) fail(`could not run ${shown}: ${res.error.message}`)
  if (expectStatus === null) return res
  if (res.status !== expectStatus) {
    const output = `${res.stdout}\n${res.stderr}`.trim().split('\n').slice(-40).join('\n')
    fail(`${shown} exited with ${res.status ?? res.signal}, expected ${expectStatus}\n${output}`)
  }
  return res.stdout
}

/** `npm pack` of `dir` into `dest`, running none of its scripts; returns npm's JSON report of it. */
function npmPack(dir, dest, extra = []) {
  // Packing runs `prepare`, which would build the addon from source. npm 11 skips it with
  // --ignore-scripts; npm 10 (bundled with Node 20 and 22) runs it anyway (npm/cli#7211), so
  // --script-shell=true turns it into a no-op there, though npm still prints its banner to stdout.
  const args = ['pack', '--json', '--ignore-scripts', '--script-shell=true', '--pack-destination', dest, ...extra]
  const out = run('npm', args, { cwd: dir })
  const start = out.search(/^\[/m)
  if (start === -1) fail(`npm pack printed no JSON report:\n${out}`)
  return JSON.parse(out.slice(start))[0]
}

/** Fails if `npm publish` would rewrite the package.json in `dir` (e.g. drop an invalid `bin`). */
function checkPublishable(dir) {
  const res = run('npm', ['publish', '--dry-run', '--ignore-scripts', '--script-shell=true'], {
    cwd: dir,
    expectStatus: null,
  })
  if (res.status !== 0 || /auto-corrected/.test(res.stderr)) {
    const problems = res.stderr.split('\n').filter((line) => /^npm (error|warn publish)/.test(line))
    fail(`npm publish --dry-run of ${dir} fails or rewrites package.json:\n${problems.join('\n')}`)
  }
}

const packedPaths = (report) => report.files.map((f) => f.path).toSorted()

const temps = []
function tempDir(tag) {
  const dir = mkdtempSync(join(tmpdir(), `distlock-pack-${tag}-`))
  temps.push(dir)
  return dir
}

// Steps run in order; a step whose prerequisites failed is skipped, the others still run.
const steps = []
const step = (name, needs, fn) => steps.push({ name, needs, fn })
const ctx = {}

step('preflight', [], () => {
  const missing = []
  if (!existsSync(join(ROOT, binary))) missing.push(`${binary} (the addon)`)
  if (!existsSync(join(ROOT, 'dist', 'index.js'))) missing.push('dist/ (the TypeScript build)')
  if (missing.length > 0) fail(`missing ${missing.join(' and ')}: run \`npm install\` (or \`npm run build\`) first`)
  if (!existsSync(join(ROOT, 'npm', PLATFORM))) fail(`missing npm/${PLATFORM}/: run \`npx napi create-npm-dirs\``)
  if (
    process.platform !== 'linux' ||
    process.arch !== 'x64' ||
    !process.report.getReport().header.glibcVersionRuntime
  ) {
    fail(`this check installs the ${PLATFORM} package, so it must run on Linux x64 with glibc`)
  }
  // The platform packages are the ones `napi create-npm-dirs` made from the napi config.
  ctx.platformPackages = readdirSync(join(ROOT, 'npm')).map(
    (dir) => JSON.parse(readFileSync(join(ROOT, 'npm', dir, 'package.json'), 'utf8')).name,
  )
  if (ctx.platformPackages.length !== pkg.napi.targets.length) {
    fail(
      `npm/ has ${ctx.platformPackages.length} platform packages, the napi config ${pkg.napi.targets.length} targets`,
    )
  }
  const stale = ctx.platformPackages.filter((name) => !name.startsWith(`${pkg.name}-`))
  if (stale.length > 0) fail(`npm/ holds packages not named ${pkg.name}-<platform>: ${stale.join(', ')}`)
  ctx.work = tempDir('work')
  return `${binary} and dist/ present; ${ctx.platformPackages.length} platform packages in npm/`
})

step(`pack ${pkg.name}-${PLATFORM}`, ['preflight'], () => {
  const stage = join(ctx.work, PLATFORM)
  cpSync(join(ROOT, 'npm', PLATFORM), stage, { recursive: true })
  cpSync(join(ROOT, binary), join(stage, binary))
  checkPublishable(stage)
  const report = npmPack(stage, ctx.work)
  if (!report.files.some((f) => f.path === binary)) fail(`the tarball lacks ${binary}`)
  ctx.platformTgz = join(ctx.work, report.filename)
  return `${report.filename} (${(report.size / 1e6).toFixed(1)} MB)`
})

step(`pack ${pkg.name}`, ['preflight'], () => {
  // Stage what `npm pack` would take from the repo root, and add the optionalDependencies that
  // `napi prepublish` writes at release time, so package.json in the checkout stays untouched.
  const stage = join(ctx.work, 'main')
  for (const entry of pkg.files) {
    if (/[*?{]/.test(entry)) fail(`"files" entry ${entry} is a glob; this script copies plain paths only`)
    if (!existsSync(join(ROOT, entry))) fail(`"files" lists ${entry}, which does not exist: run \`npm run build\``)
    cpSync(join(ROOT, entry), join(stage, entry), { recursive: true })
  }
  // npm packs these whether or not "files" lists them.
  for (const name of readdirSync(ROOT).filter((f) => /^(readme|license|licence|changelog)(\..*)?$/i.test(f))) {
    cpSync(join(ROOT, name), join(stage, name))
  }
  const optionalDependencies = Object.fromEntries(ctx.platformPackages.map((name) => [name, pkg.version]))
  // As the release publishes it: without `prepare`, which builds a checkout from source and
  // would only make npm 11 warn about an install script on every user's install.
  const { prepare: _prepare, ...scripts } = pkg.scripts
  writeFileSync(join(stage, 'package.json'), `${JSON.stringify({ ...pkg, scripts, optionalDependencies }, null, 2)}\n`)
  checkPublishable(stage)
  const report = npmPack(stage, ctx.work)

  // The staged tarball must hold exactly the files a pack of the checkout would.
  const fromRoot = npmPack(ROOT, ctx.work, ['--dry-run'])
  const [staged, real] = [packedPaths(report), packedPaths(fromRoot)]
  const onlyStaged = staged.filter((f) => !real.includes(f))
  const onlyReal = real.filter((f) => !staged.includes(f))
  if (onlyStaged.length + onlyReal.length > 0) {
    fail(`staged pack differs from the checkout's: only staged ${onlyStaged}; only checkout ${onlyReal}`)
  }
  const missing = ['README.md', 'LICENSE', 'CHANGELOG.md', 'dist/index.js', 'dist/cli.js'].filter(
    (f) => !staged.includes(f),
  )
  if (missing.length > 0) fail(`the main package lacks ${missing.join(', ')}`)
  const natives = staged.filter((f) => f.endsWith('.node'))
  if (natives.length > 0) fail(`the main package must not ship a binary, found ${natives.join(', ')}`)
  ctx.mainTgz = join(ctx.work, report.filename)
  return `${report.filename}: ${report.entryCount} files, optionalDependencies on ${ctx.platformPackages.length} platform packages`
})

step('publint', [`pack ${pkg.name}`], () => {
  // Exits non-zero on errors; warnings and suggestions are printed but pass.
  const out = run('npx', ['--no', 'publint', 'run', ctx.mainTgz])
  return out.trim().split('\n').slice(-1)[0]
})

step('attw --profile node16', [`pack ${pkg.name}`], () => {
  // attw takes a tarball as is (`--pack` is for a directory). It exits 1 when a problem is left
  // after the profile, which for node16 ignores only node10 resolution; its JSON lists every
  // problem, node10 ones included. No rule is ignored: the binary in the optional dependencies
  // is loaded by native.cjs at run time and type resolution never looks for it.
  const args = ['--no', 'attw', ctx.mainTgz, '--profile', 'node16']
  const res = run('npx', [...args, '--format', 'json'], { expectStatus: null })
  let analysis
  try {
    analysis = JSON.parse(res.stdout).analysis
  } catch {
    fail(`attw printed no JSON (exit ${res.status}):\n${res.stdout}${res.stderr}`)
  }
  if (!analysis.types) fail('attw found no types in the package')
  if (res.status !== 0) {
    const kinds = new Set(analysis.problems.filter((p) => p.resolutionKind !== 'node10').map((p) => p.kind))
    const table = run('npx', [...args, '--no-color', '--no-emoji'], { expectStatus: null }).stdout
    fail(`attw exited with ${res.status}: ${[...kinds].join(', ')}\n${table.trim()}`)
  }
  return `no problems in ${Object.keys(analysis.entrypoints).join(', ')} (node16 from CJS and ESM, bundler)`
})

// The user's environment: no directory holding `cargo` or `rustc` on PATH, so nothing can
// build from source, and no napi override that would load an addon from elsewhere.
const hasRust = (dir) => ['cargo', 'rustc', 'cargo.exe', 'rustc.exe'].some((f) => existsSync(join(dir, f)))
const userEnv = () => {
  const PATH = (process.env.PATH ?? '')
    .split(delimiter)
    .filter((dir) => dir && !hasRust(dir))
    .join(delimiter)
  const env = { ...process.env, PATH }
  for (const name of Object.keys(env)) if (name.startsWith('NAPI_RS_')) delete env[name]
  return env
}

step('install into an empty project without Rust', [`pack ${pkg.name}-${PLATFORM}`, `pack ${pkg.name}`], () => {
  const env = userEnv()
  const probe = spawnSync('cargo', ['--version'], { env, timeout: MINUTE })
  if (probe.error?.code !== 'ENOENT') fail('cargo is still on the stripped PATH')
  ctx.app = tempDir('app')
  ctx.env = env
  run('npm', ['init', '-y'], { cwd: ctx.app, env })
  // The main package's other seven optional dependencies are not on the registry: npm 11 gets a
  // 404 for each and, because they are optional, skips them and installs the rest (checked
  // with npm 11.19); linux-x64-gnu is satisfied by the platform tarball installed beside it.
  const installArgs = ['install', '--no-audit', '--no-fund', '--loglevel=warn', ctx.mainTgz, ctx.platformTgz]
  const installed = spawnSync('npm', installArgs, {
    cwd: ctx.app,
    env,
    encoding: 'utf8',
    timeout: 5 * MINUTE,
  })
  if (installed.status !== 0) fail(`npm install exited with ${installed.status}:\n${installed.stderr}`)
  // A user's install prints no warning of ours (npm 11 warns about any install script, `prepare` too).
  const warnings = installed.stderr
    .split('\n')
    .filter((l) => l.startsWith('npm warn') && !/ E404 |404 Not Found/.test(l))
  if (warnings.some((l) => /install-scripts|distlock/.test(l))) fail(`npm install warned:\n${warnings.join('\n')}`)

  const modules = join(ctx.app, 'node_modules')
  const present = readdirSync(modules).filter((name) => name.startsWith(pkg.name))
  const expected = [pkg.name, `${pkg.name}-${PLATFORM}`]
  if (present.toSorted().join() !== expected.toSorted().join())
    fail(`installed ${present.join(', ')}; expected ${expected.join(', ')}`)
  if (!existsSync(join(modules, `${pkg.name}-${PLATFORM}`, binary))) fail(`${pkg.name}-${PLATFORM} lacks ${binary}`)
  const stray = readdirSync(join(modules, pkg.name), { recursive: true }).filter((f) => f.endsWith('.node'))
  if (stray.length > 0)
    fail(`${pkg.name} itself holds a binary (${stray.join(', ')}): the platform package would not be used`)
  return `${present.join(' + ')}; cargo not on PATH; no install-script warning`
})

// The ESM and CommonJS checks share this body; the lock directory is their first argument.
const checkBody = `
const locks = new FileLockProvider({ directory: process.argv[2] })
const lock = locks.createLock('pack-check')
const handle = await lock.acquire({ timeoutMs: 5000 })
if (typeof handle.fencingToken !== 'bigint') throw new Error('fencingToken is ' + typeof handle.fencingToken)
const second = await lock.tryAcquire()
if (second !== null) throw new Error('a second tryAcquire got the held lock')
await handle.release()
const third = await lock.tryAcquire()
if (third === null) throw new Error('tryAcquire after release found the lock busy')
await third.release()
await locks.close()
const binding = require.resolve('${pkg.name}-${PLATFORM}/${binary}')
console.log('token ' + handle.fencingToken + ', busy while held, free after release; addon ' + binding)
`
const checks = {
  'check.mjs': `import { FileLockProvider } from '${pkg.name}'\nimport { createRequire } from 'node:module'\nconst require = createRequire(import.meta.url)\n${checkBody}`,
  'check.cjs': `const { FileLockProvider } = require('${pkg.name}')\n;(async () => {\n${checkBody}\n})().catch((err) => {\n  console.error(err)\n  process.exit(1)\n})\n`,
}
for (const [file, source] of Object.entries(checks)) {
  const kind = file.endsWith('.mjs') ? 'ESM import' : 'CommonJS require'
  step(kind, ['install into an empty project without Rust'], () => {
    writeFileSync(join(ctx.app, file), source)
    const out = run(process.execPath, [file, tempDir('locks')], { cwd: ctx.app, env: ctx.env, timeout: MINUTE })
    return out.trim()
  })
}

step('npx distlock run', ['install into an empty project without Rust'], () => {
  // The command exits 7 only if it finds the lock held, i.e. the CLI holds it while it runs.
  const locksDir = tempDir('cli')
  const probe = [
    `const { FileLockProvider } = require('${pkg.name}')`,
    `const locks = new FileLockProvider({ directory: ${JSON.stringify(locksDir)} })`,
    `locks.createLock('demo').tryAcquire().then((h) => process.exit(h === null ? 7 : 3))`,
  ].join('\n')
  // --no: use the installed bin, never fetch a package called distlock from the registry.
  const args = ['--no', '--', pkg.name, 'run', 'demo', '--file', locksDir, '--', 'node', '-e', probe]
  run('npx', args, { cwd: ctx.app, env: ctx.env, timeout: MINUTE, expectStatus: 7 })
  return 'exit code 7 passed through; the lock was held while the command ran'
})

const results = []
for (const { name, needs, fn } of steps) {
  const blocked = needs.filter((n) => results.find((r) => r.name === n)?.status !== 'ok')
  if (blocked.length > 0) {
    results.push({ name, status: 'skipped', detail: `needs ${blocked.join(', ')}` })
    continue
  }
  process.stdout.write(`== ${name}\n`)
  try {
    results.push({ name, status: 'ok', detail: fn() })
  } catch (err) {
    results.push({ name, status: 'FAIL', detail: err instanceof StepError ? err.message : err.stack })
  }
}

if (keep) console.log(`\nkept: ${temps.join(' ')}`)
else for (const dir of temps) rmSync(dir, { recursive: true, force: true })

console.log('\npack-install summary')
for (const { name, status, detail } of results) {
  const [first, ...rest] = String(detail).split('\n')
  console.log(`  ${status.padEnd(7)} ${name}: ${first}`)
  for (const line of rest) console.log(`            ${line}`)
}
const bad = results.filter((r) => r.status !== 'ok').length
console.log(
  bad === 0 ? '\nOK: the packed packages install and work without Rust.' : `\nFAILED: ${bad} step(s) did not pass.`,
)
process.exitCode = bad === 0 ? 0 : 1
