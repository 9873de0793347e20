// Types of proxy.mjs.
export type ProxyMode = 'pass' | 'delay' | 'blackhole' | 'reset'

export declare class FaultProxy {
  constructor(upstream: { host?: string; port: number })
  /** The port it listens on, once listening. */
  port: number
  mode: ProxyMode
  listen(port?: number): Promise<number>
  setMode(mode: ProxyMode, delayMs?: number): void
  close(): Promise<void>
}

/**
 * A started proxy in front of 127.0.0.1:`port`, closed by stopServices() / cleanupAll() too. It
 * listens on a free port, or on `listen` (a port a client was given before the proxy existed).
 */
export declare function startProxy(port: number, options?: { listen?: number }): Promise<FaultProxy>
