/**
 * The file guard: an atomic replace of a file (temporary file, fsync, rename, fsync of the
 * directory) that happens only if the write's fencing token is not below the one recorded in
 * the file's `.fence` sidecar.
 */
import { randomBytes } from 'node:crypto'
import { open, readFile, rename, stat, unlink } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

import { invalidArgType } from '../errors'
import { typeName } from '../options'
import { FileLockProvider } from '../providers'
import { StaleFencingTokenError, checkToken, parseStored } from './error'

/**
 * One file-lock provider per directory, made on first use. The check of the sidecar and the
 * two renames run under the lock of the file's name in the file's own directory, so every
 * process that writes the path takes the same OS lock (`flock`), whatever its lock directory.
 */
const providers = new Map<string, FileLockProvider>()

function lockOf(path: string): ReturnType<FileLockProvider['createLock']> {
  const directory = dirname(path)
  let provider = providers.get(directory)
  if (!provider) {
    provider = new FileLockProvider({ directory })
    providers.set(directory, provider)
  }
  return provider.createLock(`${basename(path)}.fence`)
}

/** Writes `data` to a new file beside `path`, fsyncs it and renames it over `path`. */
async function replace(path: string, data: string | Uint8Array, mode: number | undefined): Promise<void> {
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  const file = await open(temp, 'wx', mode ?? 0o666)
  try {
    try {
      await file.writeFile(data)
      // The mode asked for at creation is cut by the umask; an existing file's mode is kept as it was.
      if (mode !== undefined) await file.chmod(mode)
      await file.sync()
    } finally {
      await file.close()
    }
    await rename(temp, path)
  } catch (err) {
    await unlink(temp).catch(() => {})
    throw err
  }
}

/** Fsyncs a directory so that the renames in it survive a crash (Windows cannot open a directory; its renames are journaled). */
async function syncDirectory(directory: string): Promise<void> {
  if (process.platform === 'win32') return
  const dir = await open(directory, 'r')
  try {
    await dir.sync()
  } finally {
    await dir.close()
  }
}

/** The token recorded in `fence`, or `undefined` when no fenced write has been made. */
async function recorded(fence: string): Promise<bigint | undefined> {
  let text: string
  try {
    text = await readFile(fence, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  return parseStored(text.trim(), `the fence file ${fence}`)
}

/**
 * Replaces the file at `path` with `data`, only if `token` is not below the largest token a
 * fenced write of `path` has recorded; it is recorded in the sidecar file `<path>.fence` (the
 * decimal token). Equal tokens are accepted: one holder may write many times.
 *
 * The write is atomic: `data` goes to a temporary file in the same directory, which is
 * fsynced and renamed over `path`, then the directory is fsynced; a reader sees the old
 * content or the new, never a part. An existing file's mode is kept.
 *
 * A file system has no "rename if": two writers could both read the old sidecar, both pass,
 * and the stale one rename last. So the check, the new token and the rename run under an OS
 * lock of `path`, the lock of the name `<file name>.fence` of a {@link FileLockProvider} on
 * the file's directory (the lock file `<file name>.fence-<hash>.lock` sits beside it). The OS
 * frees that lock when a writer dies, so a crashed writer blocks nobody. The sidecar is
 * written (atomically too) before the data: a crash between the two leaves the new token
 * with the old data, which refuses stale writers and accepts the same holder's retry.
 *
 * Every writer of the file must write through this function: a plain `fs.writeFile` checks
 * nothing. The lock is a `flock`, so the guard holds among the processes of one machine on a
 * local file system (see the file backend's limits).
 *
 * ```ts
 * import { fencedWriteFile } from 'distlock'
 * await fencedWriteFile('/var/lib/app/report.json', JSON.stringify({ ok: true }), 7n)
 * ```
 * @throws {@link StaleFencingTokenError} when the sidecar records a larger token: the file is
 * untouched. TypeError for arguments of the wrong type; the file system's own errors as they
 * come (`ENOENT` for a directory that does not exist).
 */
export async function fencedWriteFile(path: string | URL, data: string | Uint8Array, token: bigint): Promise<void> {
  if (typeof path !== 'string' && !(path instanceof URL)) {
    throw invalidArgType(`The "path" argument must be of type string or an instance of URL. Received ${typeName(path)}`)
  }
  if (typeof data !== 'string' && !(data instanceof Uint8Array)) {
    throw invalidArgType(
      `The "data" argument must be of type string or an instance of Buffer or Uint8Array. Received ${typeName(data)}`,
    )
  }
  checkToken(token)
  const file = resolve(typeof path === 'string' ? path : fileURLToPath(path))
  const directory = dirname(file)
  // The directory must exist: the lock provider would create it, a plain write would not.
  if (!(await stat(directory)).isDirectory()) {
    throw Object.assign(new Error(`ENOTDIR: not a directory, '${directory}'`), { code: 'ENOTDIR', path: directory })
  }
  const fence = `${file}.fence`
  await lockOf(file).withLock(async () => {
    const current = await recorded(fence)
    if (current !== undefined && current > token) {
      throw new StaleFencingTokenError({ resource: file, token, current })
    }
    const mode = await stat(file).then(
      (s) => s.mode & 0o7777,
      () => undefined,
    )
    if (current !== token) await replace(fence, `${token}\n`, undefined)
    await replace(file, data, mode)
    await syncDirectory(directory)
  })
}
