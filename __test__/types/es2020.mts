// Compiled (never run) by module.spec.ts with lib es2020 and skipLibCheck off.
import { FileLockProvider, type LockHandle } from 'distlock'
const p = new FileLockProvider({ directory: '/tmp/x' })
export async function f(): Promise<bigint> {
  const h: LockHandle = await p.createLock('a').acquire({ timeoutMs: 1 })
  await h.release()
  return h.fencingToken
}
