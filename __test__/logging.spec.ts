// NODE_DEBUG=distlock in a child process: the calls logged on stderr, the Rust backends' events
// routed at the level DISTLOCK_LOG_LEVEL asks for, and nothing at all without it.
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

import { tempDir } from './helpers'

/** A child that takes, tries and releases a file lock. */
const debugScript = (dir: string) => `
  const { FileLockProvider } = require('distlock')
  ;(async () => {
    const locks = new FileLockProvider({ directory: ${JSON.stringify(dir)} })
    const h = await locks.createLock('logged').acquire()
    await locks.createLock('logged').tryAcquire()
    await h.release()
    await locks.close()
    await new Promise((r) => setTimeout(r, 50)) // the backends' lines arrive through the loop
  })()
`

/** Runs that child with `env`; returns its stderr. */
const run = async (env: Record<string, string>) => {
  const { spawnSync } = await import('node:child_process')
  const res = spawnSync(process.execPath, ['-e', debugScript(tempDir('debuglog'))], {
    cwd: join(__dirname, '..'),
    encoding: 'utf8',
    timeout: 20_000,
    env: { ...process.env, NODE_DEBUG: '', DISTLOCK_LOG_LEVEL: '', ...env },
  })
  expect(res.status, res.stderr).toBe(0)
  return res.stderr
}

describe('NODE_DEBUG=distlock', () => {
  it('logs the calls and routes the Rust backends’ events at the level asked for', async () => {
    const out = await run({ NODE_DEBUG: 'distlock' })
    const lines = out.split('\n').filter(Boolean)
    for (const line of lines) expect(line).toMatch(/^DISTLOCK \d+: /)
    expect(out).toMatch(/: acquire file mutex "logged": granted after \d+\.\d ms, token \d+$/m)
    expect(out).toMatch(/: tryAcquire file mutex "logged": busy after \d+\.\d ms$/m)
    expect(out).toMatch(/: release file mutex "logged", token \d+, held \d+\.\d ms$/m)
    // From the Rust side: the file backend's own debug event for the grant.
    expect(out).toMatch(/: DEBUG distlock_file\S*: acquired .*name=logged/m)

    const warnOnly = await run({ NODE_DEBUG: 'distlock', DISTLOCK_LOG_LEVEL: 'warn' })
    expect(warnOnly).toMatch(/: acquire file mutex "logged": granted/)
    expect(warnOnly).not.toMatch(/DEBUG distlock_file/)

    expect(await run({})).toBe('')
  })
})
