// Types of postgres.mjs.
export interface Cluster {
  url: string
  port: number
  /** With `ssl`: the private CA that signed the server's certificate (for "localhost"). */
  certFile: string | undefined
  /** Runs `sql` with psql; resolves to its output. */
  psql(sql: string): Promise<string>
  /** Ends every client session but the one asking; resolves to how many. */
  terminateAll(): Promise<number>
  /** A crash (immediate shutdown) and restart with the same options. */
  restart(): Promise<void>
  stop(): void
}
/** The port in a postgres:// URL. */
export function urlPort(url: string): number
/** A private cluster (initdb + pg_ctl), or null when the server binaries are not installed. */
export function startCluster(options?: { ssl?: boolean; password?: string }): Promise<Cluster | null>
/** A private cluster, or an error saying what to install. */
export function privatePostgres(): Promise<Cluster>
/** $DISTLOCK_TEST_PG_URL, else 127.0.0.1:5432, else a private cluster; throws saying what to install. */
export function findPostgres(): Promise<{ url: string; how: string }>
