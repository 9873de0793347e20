// Types of etcd.mjs.
export interface EtcdMember {
  name: string
  /** http://127.0.0.1:<client port> */
  endpoint: string
  pid: number
  /** Sends a signal while the member runs (default SIGKILL; SIGSTOP pauses it, SIGCONT resumes it). */
  kill(signal?: NodeJS.Signals): boolean
  /** Kills the member (resuming it first when paused). */
  stop(): void
}
/** One private etcd member; stop() kills it and removes its data dir. */
export function startEtcd(): Promise<{
  endpoint: string
  pid: number
  kill(signal?: NodeJS.Signals): boolean
  stop(): void
}>
/** A private etcd cluster of `n` members (3 by default). */
export function startEtcdCluster(n?: number): Promise<{
  endpoints: string[]
  members: EtcdMember[]
  /** The index in `members` of the current leader, waiting up to 10 s through an election. */
  leader(): Promise<number>
  /** Kills every member and removes the data dirs. */
  stop(): void
}>
