// Types of net.mjs.
export function sleep(ms: number): Promise<void>
/** A port of 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number>
/** `count` distinct free loopback ports. */
export function freePorts(count: number): Promise<number[]>
/** Whether 127.0.0.1:`port` accepts a TCP connection within `ms` (300 by default). */
export function reachable(port: number, ms?: number): Promise<boolean>
/** Polls `check` every 25 ms until it returns truthy, for at most `ms` (10 s by default); throws naming `what`. */
export function waitFor(check: () => unknown, what: string, ms?: number): Promise<void>
