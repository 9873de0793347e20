// Types of mysql.mjs.
export interface MysqlServer {
  /** mysql://root@127.0.0.1:<port>/test for a private server. */
  url: string
  /** The private CA that signed the server's certificate (CN and SAN "localhost"): connect to localhost to verify it. */
  caFile: string | undefined
  port: number
  /** A private server's unix socket (root logs in there with no password too). */
  socket: string | undefined
  /** A private server's mariadbd process. */
  pid: number | undefined
}
/** A private MariaDB server (mariadb-install-db + mariadbd, TLS offered), stopped by stop() or stopServices(). */
export function startMysql(): Promise<MysqlServer & { socket: string; pid: number; stop(): void }>
/** $DISTLOCK_TEST_MYSQL_URL (with $DISTLOCK_TEST_MYSQL_CA), else a private MariaDB server; throws saying what to install. */
export function findMysql(): Promise<MysqlServer & { how: string }>
