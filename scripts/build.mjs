// Builds the native addon from source (release profile) and the TypeScript layer.
// Runs on `npm install` in a checkout (the `prepare` script); a user installing from the
// registry gets a prebuilt binary and never runs it.
import { spawnSync } from 'node:child_process'

function run(cmd, args) {
  const res = spawnSync(cmd, args, { stdio: 'inherit', shell: process.platform === 'win32' })
  if (res.error?.code === 'ENOENT') {
    console.error(
      `distlock: '${cmd}' was not found. Building from source needs Rust (https://rustup.rs) and Node >= 20.`,
    )
    process.exit(1)
  }
  if (res.status !== 0) process.exit(res.status ?? 1)
}

const which = process.argv[2] ?? 'all'
if (which === 'all' || which === 'native') {
  run('cargo', ['--version'])
  run('npm', ['run', '--silent', 'build:native'])
}
if (which === 'all' || which === 'ts') run('npm', ['run', '--silent', 'build:ts'])
