/**
 * `releaseOnExit`: the locks of the providers that ask for it are released when the process ends
 * normally (the event loop runs dry), or on SIGINT or SIGTERM. The process's own behaviour stays
 * as it was: after the release, a signal that nothing else listens for is raised again, so the
 * process still dies of it (exit status 128 + N); where the application listens itself, its
 * listeners decide. `process.exit()` ends the process at once, so nothing can be released then.
 * Node does not read a signal while its event loop is idle with nothing left to run; such a
 * process ends normally instead, and the release happens on the way out ('beforeExit').
 */
const SIGNALS = ['SIGINT', 'SIGTERM'] as const

/** The longest a release on a signal may take before the signal goes on. */
const SIGNAL_RELEASE_MS = 2_000

interface Closable {
  close(): Promise<void>
}

const providers = new Set<Closable>()
let installed = false

function closeAll(): Promise<unknown> {
  return Promise.allSettled([...providers].map((p) => p.close()))
}

function onBeforeExit(): void {
  // The loop ran dry: closing releases whatever is still held, then the loop runs dry again.
  if (providers.size > 0) void closeAll()
}

const onSignal = (signal: NodeJS.Signals) => {
  void (async () => {
    let timer: NodeJS.Timeout | undefined
    await Promise.race([closeAll(), new Promise((resolve) => (timer = setTimeout(resolve, SIGNAL_RELEASE_MS)))])
    clearTimeout(timer)
    uninstall()
    // Nobody else listens: do what the signal would have done without us.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
  })()
}

function install(): void {
  if (installed) return
  installed = true
  process.on('beforeExit', onBeforeExit)
  for (const s of SIGNALS) process.on(s, onSignal)
}

function uninstall(): void {
  if (!installed) return
  installed = false
  process.off('beforeExit', onBeforeExit)
  for (const s of SIGNALS) process.off(s, onSignal)
}

/** Releases `provider`'s locks at exit until {@link forget} is called for it. @internal */
export function releaseAtExit(provider: Closable): void {
  providers.add(provider)
  install()
}

/** Called when `provider` closes. @internal */
export function forget(provider: Closable): void {
  if (!providers.delete(provider)) return
  if (providers.size === 0) uninstall()
}
