/** The in-process provider, for tests. */
import native from '../native'
import { BaseProvider, fromNative, type CommonProviderOptions } from '../base-provider'
import { PROVIDER_KEYS, checkOptions } from './common'

/**
 * Locks inside this process only, with the same interface, semantics and errors as the other
 * providers (FIFO waiting, reader-writer locks with writer preference, semaphores, fencing
 * tokens, timeouts, `AbortSignal`, `close()`): for unit tests that should not need a server.
 * Locks have no lease and are lost only when the provider is closed.
 */
export class MemoryLockProvider extends BaseProvider {
  constructor(options: CommonProviderOptions = {}) {
    checkOptions(options, PROVIDER_KEYS.memory)
    super(
      fromNative(() => native.NativeProvider.memory()),
      'memory',
      options,
    )
  }
}
