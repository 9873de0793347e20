/** Types of test-services.mjs for the TypeScript specs. */
export interface Cluster {
  url: string
  port: number
  certFile: string | undefined
  stop(): void
}
export function startCluster(options?: { ssl?: boolean; password?: string }): Promise<Cluster | null>
export function findPostgres(): Promise<{ url: string; how: string }>
export function stopServices(): void
