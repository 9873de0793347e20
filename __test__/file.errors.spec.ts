import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { FileLockProvider, LockBackendError, LockClosedError, type AcquireOptions } from 'distlock'

import { tempDir } from './helpers'

const provider = new FileLockProvider({ directory: tempDir('errors') })
afterAll(() => provider.close())

type Case = [
  label: string,
  run: () => unknown,
  errorClass: ErrorConstructor | typeof LockBackendError,
  code: string,
  message: RegExp,
]

const lock = () => provider.createLock('valid')
const cases: Case[] = [
  ['empty name', () => provider.createLock(''), RangeError, 'ERR_INVALID_ARG_VALUE', /name must be a non-empty string/],
  [
    'non-string name',
    () => provider.createLock(42 as unknown as string),
    TypeError,
    'ERR_INVALID_ARG_TYPE',
    /"name" argument must be of type string. Received type number \(42\)/,
  ],
  [
    'undefined name',
    () => provider.createReaderWriterLock(undefined as unknown as string),
    TypeError,
    'ERR_INVALID_ARG_TYPE',
    /Received type undefined/,
  ],
  [
    'negative timeout',
    () => lock().acquire({ timeoutMs: -1 }),
    RangeError,
    'ERR_INVALID_ARG_VALUE',
    /timeoutMs must not be negative, got -1/,
  ],
  [
    'NaN timeout',
    () => lock().tryAcquire({ timeoutMs: NaN }),
    RangeError,
    'ERR_INVALID_ARG_VALUE',
    /timeoutMs must be a number of milliseconds, got NaN/,
  ],
  [
    'huge timeout',
    () => lock().acquire({ timeoutMs: 1e12 }),
    RangeError,
    'ERR_INVALID_ARG_VALUE',
    /timeoutMs must be at most/,
  ],
  [
    'string timeout',
    () => lock().acquire({ timeoutMs: '10' } as unknown as AcquireOptions),
    TypeError,
    'ERR_INVALID_ARG_TYPE',
    /"options.timeoutMs" property must be of type number/,
  ],
  [
    'non-signal signal',
    () => lock().acquire({ signal: {} } as unknown as AcquireOptions),
    TypeError,
    'ERR_INVALID_ARG_TYPE',
    /"options.signal" property must be an instance of AbortSignal/,
  ],
  [
    'options not an object',
    () => lock().acquire(5 as unknown as AcquireOptions),
    TypeError,
    'ERR_INVALID_ARG_TYPE',
    /"options" argument must be of type object/,
  ],
  [
    'maxCount 0',
    () => provider.createSemaphore('s', 0),
    RangeError,
    'ERR_INVALID_ARG_VALUE',
    /maxCount must be from 1 to 1000000, got 0/,
  ],
  [
    'maxCount 1.5',
    () => provider.createSemaphore('s', 1.5),
    RangeError,
    'ERR_INVALID_ARG_VALUE',
    /maxCount must be a whole number, got 1.5/,
  ],
  [
    'maxCount string',
    () => provider.createSemaphore('s', '3' as unknown as number),
    TypeError,
    'ERR_INVALID_ARG_TYPE',
    /"maxCount" argument must be of type number/,
  ],
  [
    'withLock without a function',
    () => lock().withLock(undefined as unknown as () => void),
    TypeError,
    'ERR_INVALID_ARG_TYPE',
    /"fn" argument must be of type function/,
  ],
  [
    'directory option not a string',
    () => new FileLockProvider({ directory: 7 as unknown as string }),
    TypeError,
    'ERR_INVALID_ARG_TYPE',
    /"options.directory" property must be of type string/,
  ],
]

describe('bad input gets a clear error that names what was wrong', () => {
  it.each(cases)('%s', async (_label, run, errorClass, code, message) => {
    let err: unknown
    try {
      await run()
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(errorClass)
    expect((err as { code?: string }).code).toBe(code)
    expect((err as Error).message).toMatch(message)
  })

  it('a directory path that is a file gives LockBackendError naming the path, and nothing stays locked', async () => {
    const file = join(tempDir('notdir'), 'a-file')
    writeFileSync(file, 'x')
    await using p = new FileLockProvider({ directory: file })
    const err = await p
      .createLock('x')
      .acquire()
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as LockBackendError).code).toBe('ERR_LOCK_BACKEND')
    expect((err as Error).message).toContain(file)
    expect((err as Error).message).toContain('not a directory')
    const under = new FileLockProvider({ directory: join(file, 'sub') })
    await expect(under.createLock('x').tryAcquire()).rejects.toBeInstanceOf(LockBackendError)
    await under.close()
  })

  // /proc refuses new directories on Linux (and / is not writable for a normal user on macOS).
  it.runIf(process.platform !== 'win32')('a directory that cannot be created gives LockBackendError', async () => {
    await using p = new FileLockProvider({ directory: '/proc/distlock-cannot-exist' })
    const err = await p
      .createLock('x')
      .acquire()
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toContain('/proc/distlock-cannot-exist')
  })

  it('a closed provider rejects with LockClosedError', async () => {
    const p = new FileLockProvider({ directory: tempDir('closed') })
    const l = p.createLock('x')
    await p.close()
    const err = await l.acquire().catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockClosedError)
    expect((err as LockClosedError).code).toBe('ERR_LOCK_CLOSED')
    expect(() => p.createSemaphore('x', 2)).toThrow(LockClosedError)
  })

  it('bad input never leaves a lock held', async () => {
    const l = provider.createLock('after-errors')
    await expect(l.acquire({ timeoutMs: -5 })).rejects.toThrow(RangeError)
    const h = await l.tryAcquire()
    expect(h).not.toBeNull()
    await h!.release()
  })
})
