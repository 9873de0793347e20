// Types of cleanup.mjs.
/** Runs `fn` when the lab is cleaned up (stopServices, cleanupAll, or the process's exit). */
export function onCleanup(fn: () => unknown): void
/** Stops everything the lab started, newest first, without waiting for asynchronous stops. */
export function stopServices(): void
/** Stops everything the lab started, newest first, awaiting each stop. */
export function cleanupAll(): Promise<void>
