/**
 * What a provider gives its lock objects ({@link LockSource}), and how the native calls that
 * could not answer at once are settled ({@link Settler}).
 */
import type { NativeHandle, NativeProvider } from './native'
import type { LockKind } from './options'

type Pending = { resolve: (handle: NativeHandle | null) => void; reject: (err: unknown) => void }

/**
 * Settles the native calls of one provider that could not answer at once. The binding settles
 * them all through one long-lived channel (one callback per provider, not one per call), keyed
 * by the id each call was given. A pending call keeps the process alive; an idle provider does
 * not.
 * @internal
 */
export class Settler {
  readonly #pending = new Map<number, Pending>()
  #next = 0
  // The native channel does not hold the event loop open; this timer does, while calls pend.
  readonly #alive = setInterval(() => {}, 2 ** 31 - 1).unref()

  constructor(nativeProvider: NativeProvider) {
    nativeProvider.onSettle((id, handle, error) => this.#settle(id, handle, error))
  }

  /** A fresh id for a call (ids wrap at 2^32; far more than can pend at once). */
  id(): number {
    this.#next = (this.#next + 1) >>> 0
    return this.#next
  }

  /** The answer of the call `id`, which the binding said will come later. */
  wait(id: number): Promise<NativeHandle | null> {
    return new Promise((resolve, reject) => {
      if (this.#pending.size === 0) this.#alive.ref()
      this.#pending.set(id, { resolve, reject })
    })
  }

  #settle(id: number, handle?: NativeHandle | null, error?: Error | null): void {
    const pending = this.#pending.get(id)
    if (!pending) return
    this.#pending.delete(id)
    if (this.#pending.size === 0) this.#alive.unref()
    if (error != null) pending.reject(error)
    else pending.resolve(handle ?? null)
  }
}

/** What a provider gives its lock objects: the native side and the names used in messages. */
export interface LockSource {
  readonly native: NativeProvider
  /** Settles the native calls that had to wait. @internal */
  readonly settler: Settler
  /** The backend's name as messages show it: `file`, `postgres`, `redis`. */
  readonly backend: string
  /** Throws {@link LockClosedError} if the provider was closed. */
  assertOpen(): void
  /**
   * The handles whose `signal` is watched, so that `close()` aborts those its close lost before
   * resolving (the native notice of a loss may reach JS only after close's answer). @internal
   */
  readonly watched?: Set<WeakRef<{ syncLost(): void }>>
  /** The provider's defaults for acquires that do not say. */
  readonly defaults?: { readonly autoRenew?: boolean | undefined; readonly maxHoldMs?: number | undefined } | undefined
}

const PRIMITIVE: Record<LockKind, string> = {
  mutex: 'lock',
  read: 'reader-writer lock',
  write: 'reader-writer lock',
  semaphore: 'semaphore',
}

/** How messages name a lock, e.g. `redis lock "orders:42"`. */
export function describe(source: LockSource, kind: LockKind, name: string): string {
  return `${source.backend} ${PRIMITIVE[kind]} ${JSON.stringify(name)}`
}
