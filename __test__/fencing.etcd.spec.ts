// The etcd guard (fencedPut, fencedTxn) on a real etcd member: writes that land only while the
// lock's own key stands with the grant's create revision. Read and tampered with through the
// real etcdctl; a holder frozen past its lease (SIGSTOP) in a child process.
import { execFileSync } from 'node:child_process'

import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest'

import {
  EtcdLockProvider,
  FileLockProvider,
  LockLostError,
  StaleFencingTokenError,
  fencedPut,
  fencedTxn,
  type FencedEtcdResult,
  type FencedEtcdWrite,
  type LockHandle,
} from 'distlock'

import { Child, tempDir } from './helpers'

type Services = typeof import('../lab/index.mjs', { with: { 'resolution-mode': 'import' } })

let seq = 0
const unique = (tag: string) => `fencing-${tag}-${process.pid}-${seq++}`

let services: Services
let endpoint: string
let etcd: EtcdLockProvider
beforeAll(async () => {
  services = await import('../lab/index.mjs')
  endpoint = (await services.startEtcd()).endpoint
  etcd = new EtcdLockProvider({ endpoints: endpoint, leaseMs: 5_000 })
}, 120_000)
afterAll(async () => {
  await etcd?.close()
  services?.stopServices()
})

/** etcdctl, the real foreign client, against the member. */
function etcdctl(...args: string[]): string {
  return execFileSync(services.etcdctlBin(), ['--endpoints', endpoint, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ETCDCTL_API: '3' },
  })
}
/** What `call` rejected with. */
const bad = async (call: () => Promise<unknown>) => (await call().catch((e: unknown) => e)) as Error
const read = (key: string) => etcdctl('get', key, '--print-value-only').replace(/\n$/, '')

describe('etcd guard', () => {
  it('fencedPut writes while the lock is held, at a revision after the grant', async () => {
    const key = `data/${unique('put')}`
    await using h = await etcd.createLock(unique('put')).acquire()
    const r = await fencedPut(h, key, 'v1')
    expect(r.revision).toBeGreaterThan(h.fencingToken)
    expect(read(key)).toBe('v1')
    // Bytes too, and a second write by the same holder.
    await fencedPut(h, key, Buffer.from('v2'))
    expect(read(key)).toBe('v2')
  })

  it('fencedTxn applies every write, puts and deletes (of a key or a prefix), in one transaction', async () => {
    const base = `data/${unique('txn')}`
    etcdctl('put', `${base}/old/a`, 'x')
    etcdctl('put', `${base}/old/b`, 'y')
    etcdctl('put', `${base}/single`, 'z')
    await using h = await etcd.createLock(unique('txn')).acquire()
    await fencedTxn(h, [
      { put: `${base}/new`, value: 'n' },
      { delete: `${base}/old/`, prefix: true },
      { delete: `${base}/single` },
    ])
    expect(etcdctl('get', `${base}/`, '--prefix', '--keys-only').split('\n').filter(Boolean)).toEqual([`${base}/new`])
  })

  it('refuses a holder whose key etcd no longer has, writing nothing, while its own clock still says held', async () => {
    const name = unique('gone')
    const key = `data/${name}`
    const h = await etcd.createLock(name).acquire()
    // Someone deletes the lock's key (etcdctl here; a lease the server expired does the same).
    expect(etcdctl('del', `distlock/${name}/`, '--prefix').trim()).toBe('1')
    expect(h.isHeld).toBe(true)
    const err = await fencedPut(h, key, 'stale').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(StaleFencingTokenError)
    const stale = err as StaleFencingTokenError
    expect(stale.code).toBe('ERR_STALE_FENCING_TOKEN')
    expect(stale.token).toBe(h.fencingToken)
    expect(stale.current).toBeGreaterThan(h.fencingToken)
    expect(stale.resource).toBe(name)
    expect(read(key)).toBe('')
    // A later holder's token is the one named.
    const next = await etcd.createLock(name).acquire({ timeoutMs: 5_000 })
    const again = (await fencedPut(h, key, 'stale').catch((e: unknown) => e)) as StaleFencingTokenError
    expect(again.current).toBe(next.fencingToken)
    await fencedPut(next, key, 'fresh')
    expect(read(key)).toBe('fresh')
    await next.release()
    await h.release()
  })

  it('a holder frozen past its lease (SIGSTOP) is refused when it wakes; the newer holder’s value is intact', async () => {
    const name = unique('frozen')
    const key = `data/${name}`
    // etcd's shortest lease is 2 s; the newer holder gets in once the server revokes it.
    const child = new Child('fencing-child.cjs', ['etcd', endpoint, '', name, '2000'])
    try {
      const stale = BigInt((await child.line('HOLDING ', 30_000)).split(' ')[1]!)
      child.kill('SIGSTOP')
      const newer = await etcd.createLock(name).acquire({ timeoutMs: 15_000 })
      expect(newer.fencingToken).toBeGreaterThan(stale)
      await fencedPut(newer, key, 'written by the newer holder')
      await newer.release()
      child.kill('SIGCONT')
      const result = (await child.line('RESULT ', 15_000)).slice('RESULT '.length)
      expect((await child.exit()).code, child.lines.join('\n')).toBe(0)
      const [what, code, token, current, resource] = result.split(' ')
      expect(what).toBe('REJECTED')
      expect(code).toBe('ERR_STALE_FENCING_TOKEN')
      expect(BigInt(token!)).toBe(stale)
      expect(BigInt(current!)).toBeGreaterThanOrEqual(newer.fencingToken)
      expect(resource).toBe(name)
      expect(read(key)).toBe('written by the newer holder')
    } finally {
      child.kill('SIGCONT')
      child.kill()
    }
  }, 60_000)

  it('says what is wrong with a handle or a write, and writes nothing', async () => {
    const name = unique('args')
    await using h = await etcd.createLock(name).acquire()
    const files = new FileLockProvider({ directory: tempDir('fencing-etcd') })
    const fileHandle = await files.createLock('x').acquire()
    const notEtcd = await bad(() => fencedPut(fileHandle, 'k', 'v'))
    expect(notEtcd).toBeInstanceOf(TypeError)
    expect(notEtcd).toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' })
    expect(notEtcd.message).toContain(`"handle" argument must be the handle of a lock from an EtcdLockProvider`)
    expect(notEtcd.message).toContain("Received a file lock's handle")
    await fileHandle.release()
    await files.close()
    expect(await bad(() => fencedPut({} as LockHandle, 'k', 'v'))).toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' })
    expect((await bad(() => fencedTxn(h, []))).message).toContain('must hold 1 to 128 writes')
    expect((await bad(() => fencedPut(h, 1 as unknown as string, 'v'))).message).toContain(
      '"key" argument must be a string or a Uint8Array',
    )
    expect((await bad(() => fencedPut(h, '', 'v'))).message).toContain('must not be empty')
    const odd = await bad(() => fencedTxn(h, [{ put: 'k', value: 'v', lease: 1 } as unknown as FencedEtcdWrite]))
    expect(odd).toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' })
    expect(odd.message).toContain('{ put, value } or { delete, prefix? }')
    expect(etcdctl('get', 'k').trim()).toBe('')
    // A released handle: the lock is gone, so is the write.
    const released = await etcd.createLock(unique('released')).acquire()
    await released.release()
    const after = await bad(() => fencedPut(released, `data/${name}`, 'v'))
    expect(after.message).toContain('was released')
    expect(read(`data/${name}`)).toBe('')
    // Neither a lost-lock error nor a stale one: the handle itself was wrong.
    expect(after).not.toBeInstanceOf(LockLostError)
  })

  it('types: the handle, the writes and the result', () => {
    expectTypeOf(fencedPut).parameter(0).toEqualTypeOf<LockHandle | import('distlock').LockGuard>()
    expectTypeOf(fencedTxn).returns.resolves.toEqualTypeOf<FencedEtcdResult>()
    expectTypeOf<{ put: string; value: Buffer }>().toMatchTypeOf<FencedEtcdWrite>()
    expectTypeOf<{ delete: string; prefix: true }>().toMatchTypeOf<FencedEtcdWrite>()
    // @ts-expect-error: a put needs its value
    const noValue: FencedEtcdWrite = { put: 'k' }
    expect(noValue).toBeDefined()
  })
})
