/**
 * The etcd guard: writes to etcd that land only while the lock is still held there. The lock's
 * own key is the fence: the write is one etcd transaction that compares the key's create
 * revision with the grant's fencing token (etcd's own "is owner" check), so a holder whose
 * lease ran out while it was paused writes nothing. No fence key of its own is needed.
 */
import { invalidArgType, invalidArgValue, toLockError } from '../errors'
import { LockHandle, nativeHandleOf } from '../handle'
import { LockGuard } from '../keyed'
import { typeName } from '../options'
import { StaleFencingTokenError } from './error'

/** A key or value of etcd: text (written as UTF-8) or bytes. */
export type EtcdBytes = string | Uint8Array

/** One write of {@link fencedTxn}: a put, or a delete of a key (or of every key under a prefix). */
export type FencedEtcdWrite = FencedEtcdPut | FencedEtcdDelete

/** A put of {@link fencedTxn}. */
export interface FencedEtcdPut {
  /** The key to set. */
  put: EtcdBytes
  /** Its new value. */
  value: EtcdBytes
}

/** A delete of {@link fencedTxn}. */
export interface FencedEtcdDelete {
  /** The key to delete, or with `prefix` the start of the keys to delete. */
  delete: EtcdBytes
  /** Delete every key that starts with `delete` (default false). */
  prefix?: boolean | undefined
}

/** What a fenced etcd write resolves with. */
export interface FencedEtcdResult {
  /** The cluster's revision of the write. */
  revision: bigint
}

/** The most writes in one transaction: etcd's default `--max-txn-ops`. */
const MAX_WRITES = 128

function bytes(value: unknown, what: string): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8')
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  throw invalidArgType(`The "${what}" argument must be a string or a Uint8Array. Received ${typeName(value)}`)
}

function checkKey(value: unknown, what: string): Buffer {
  const b = bytes(value, what)
  if (b.length === 0) throw invalidArgValue(`The "${what}" argument must not be empty`)
  return b
}

/** The handle of an etcd lock behind `handle`; a TypeError for anything else. */
function etcdHandle(handle: unknown): LockHandle {
  const h = handle instanceof LockGuard ? handle.handle : handle
  if (!(h instanceof LockHandle) || h.backend !== 'etcd') {
    const got = h instanceof LockHandle ? `a ${h.backend} lock's handle` : typeName(handle)
    throw invalidArgType(
      `The "handle" argument must be the handle of a lock from an EtcdLockProvider (or its keyed guard). Received ${got}`,
    )
  }
  return h
}

function write(w: unknown, i: number) {
  const what = `writes[${i}]`
  if (typeof w !== 'object' || w === null) {
    throw invalidArgType(`The "${what}" argument must be an object. Received ${typeName(w)}`)
  }
  const keys = Object.keys(w)
  if ('put' in w && keys.every((k) => k === 'put' || k === 'value')) {
    const { put, value } = w as { put: unknown; value: unknown }
    return { op: 'put', key: checkKey(put, `${what}.put`), value: bytes(value, `${what}.value`) }
  }
  if ('delete' in w && keys.every((k) => k === 'delete' || k === 'prefix')) {
    const { delete: del, prefix } = w as { delete: unknown; prefix?: unknown }
    if (prefix !== undefined && typeof prefix !== 'boolean') {
      throw invalidArgType(`The "${what}.prefix" argument must be of type boolean. Received ${typeName(prefix)}`)
    }
    return { op: 'delete', key: checkKey(del, `${what}.delete`), prefix: prefix === true }
  }
  throw invalidArgValue(
    `The "${what}" argument must be { put, value } or { delete, prefix? }. Received keys ${JSON.stringify(keys)}`,
  )
}

/**
 * Writes to etcd, through the lock's own provider, only while `handle`'s lock is still held
 * there: one transaction that applies every write, or none. A holder whose key is gone (its
 * lease ran out while it was paused, it was released, someone deleted the key) is refused with
 * {@link StaleFencingTokenError} and nothing is written; its `resource` is the lock's name and
 * its `current` a later token (the next holder's, or the cluster's revision at the refusal).
 * The check is etcd's: a holder whose local deadline passed while etcd still keeps its key
 * still holds, and its write lands. Settles within the provider's `opTimeoutMs`.
 *
 * ```ts
 * const handle = await etcd.createLock('config').acquire()
 * await fencedTxn(handle, [{ put: 'config/leader', value: 'node-a' }, { delete: 'config/draft/', prefix: true }])
 * ```
 */
export async function fencedTxn(
  handle: LockHandle | LockGuard,
  writes: readonly FencedEtcdWrite[],
): Promise<FencedEtcdResult> {
  const h = etcdHandle(handle)
  if (!Array.isArray(writes)) {
    throw invalidArgType(`The "writes" argument must be an array. Received ${typeName(writes)}`)
  }
  if (writes.length === 0 || writes.length > MAX_WRITES) {
    throw invalidArgValue(`The "writes" argument must hold 1 to ${MAX_WRITES} writes. Received ${writes.length}`)
  }
  const ops = writes.map(write)
  let answer: { written: boolean; revision: bigint }
  try {
    answer = await nativeHandleOf(h).fencedTxn(ops)
  } catch (err) {
    throw toLockError(err)
  }
  if (!answer.written) {
    throw new StaleFencingTokenError({ resource: h.name, token: h.fencingToken, current: answer.revision })
  }
  return { revision: answer.revision }
}

/**
 * Sets `key` to `value` in etcd only while `handle`'s lock is still held there: {@link fencedTxn}
 * with one put.
 *
 * ```ts
 * await fencedPut(handle, 'config/leader', 'node-a')
 * ```
 */
export async function fencedPut(
  handle: LockHandle | LockGuard,
  key: EtcdBytes,
  value: EtcdBytes,
): Promise<FencedEtcdResult> {
  return fencedTxn(handle, [{ put: checkKey(key, 'key'), value: bytes(value, 'value') }])
}
