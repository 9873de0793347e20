// Types of proxy.mjs.
export type ProxyMode = 'pass' | 'delay' | 'blackhole' | 'reset'

export declare class FaultProxy {
  constructor(upstream: { host?: string; port: number })
  /** The port it listens on, once listening. */
  port: number
  mode: ProxyMode
  listen(): Promise<number>
  setMode(mode: ProxyMode, delayMs?: number): void
  close(): Promise<void>
}

/** A started proxy in front of 127.0.0.1:`port`, closed by stopServices() / cleanupAll() too. */
export declare function startProxy(port: number): Promise<FaultProxy>
