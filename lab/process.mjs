// Running the lab's programs: a server with its output in a log file, a command that must not
// block the event loop, the end of a log for an error message.
import { execFile, spawn } from 'node:child_process'
import { closeSync, openSync, readFileSync } from 'node:fs'

/**
 * Spawns a server with its output going to `log` (kept out of the test output; 'ignore' drops
 * it) and tracks its exit. `kill(signal)` sends a signal while it runs; `stop()` kills it for
 * good (SIGCONT first, in case a test paused it) and may be called again.
 */
export function spawnLogged(bin, args, log, env = process.env) {
  let child
  if (log === 'ignore') {
    child = spawn(bin, args, { stdio: 'ignore', env })
  } else {
    const fd = openSync(log, 'a')
    try {
      child = spawn(bin, args, { stdio: ['ignore', fd, fd], env })
    } finally {
      closeSync(fd)
    }
  }
  const proc = { child, exited: false }
  child.on('exit', () => (proc.exited = true))
  child.on('error', () => (proc.exited = true))
  proc.kill = (signal = 'SIGKILL') => !proc.exited && child.kill(signal)
  proc.stop = () => {
    if (proc.exited) return
    child.kill('SIGCONT')
    child.kill('SIGKILL')
  }
  return proc
}

/**
 * Runs a command without blocking the event loop (torture's proxies live in the same process);
 * resolves to `{ ok, stdout, stderr, err }`.
 */
export function run(cmd, args, timeoutMs = 15_000) {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ ok: !err, stdout: stdout ?? '', stderr: stderr ?? '', err })
    })
  })
}

/** The last `chars` characters of a log file ('' when there is none). */
export function tail(file, chars = 2000) {
  try {
    return readFileSync(file, 'utf8').slice(-chars).trim()
  } catch {
    return ''
  }
}
