// The one list of what the lab started: every server, member, proxy and helper process registers
// how to stop it here, and everything is stopped in reverse order by stopServices() (at once),
// by cleanupAll() (awaiting each), or when the process exits, also when a test worker ends
// without its afterAll.

const stops = []
let exitHook = false

/** Runs `fn` (it may return a promise) when the lab is cleaned up; installs the exit hook once. */
export function onCleanup(fn) {
  stops.push(fn)
  if (exitHook) return
  exitHook = true
  process.once('exit', stopServices) // no server outlives the run
}

/**
 * Stops everything registered so far, newest first, without waiting for asynchronous stops (a
 * proxy's close): what a test's afterAll and the exit hook call.
 */
export function stopServices() {
  for (const stop of stops.splice(0).toReversed()) {
    try {
      Promise.resolve(stop()).catch(() => {})
    } catch {
      // best effort on the way out
    }
  }
}

/** The same as stopServices(), awaiting each stop in turn (torture's end of run). */
export async function cleanupAll() {
  for (const stop of stops.splice(0).toReversed()) {
    try {
      await stop()
    } catch {
      // best effort on the way out
    }
  }
}
