// The lab: the servers, tools and fault proxy that the vitest specs, `npm test`
// (scripts/test.mjs), the torture suite and the benchmarks share. Each file holds one job:
//
//   tools.mjs     where redis-server, etcd, etcdctl, mariadbd, initdb… are; installing them
//   cleanup.mjs   the one list of what was started, stopped by stopServices(), cleanupAll() or at exit
//   net.mjs       free loopback ports, reachable(), waitFor()
//   redis.mjs     redis-server processes (with pause, kill -9, restart empty), RedLock sets, a Cluster
//   sentinel.mjs  a sentinel, a Sentinel group that fails over
//   postgres.mjs  findPostgres() (env, 127.0.0.1:5432 or private) and a private cluster to crash
//   mysql.mjs     findMysql() (env or private) and a private MariaDB server
//   etcd.mjs      one private etcd member, or a cluster with its leader
//   proxy.mjs     the fault proxy (pass, delay, blackhole, reset)
//   process.mjs, tls.mjs  how servers are spawned and their test certificates (internal)
//
// Environment: DISTLOCK_TEST_PG_URL (DISTLOCK_TEST_PG=private to skip 127.0.0.1:5432),
// DISTLOCK_TEST_MYSQL_URL (+ DISTLOCK_TEST_MYSQL_CA), DISTLOCK_REDIS_SERVER, DISTLOCK_ETCD_BIN,
// DISTLOCK_ETCDCTL_BIN, DISTLOCK_MYSQLD name servers and programs; DISTLOCK_NO_INSTALL=1 keeps
// ensureTools() from installing.
export * from './cleanup.mjs'
export * from './etcd.mjs'
export * from './mysql.mjs'
export * from './net.mjs'
export * from './postgres.mjs'
export * from './proxy.mjs'
export * from './redis.mjs'
export * from './sentinel.mjs'
export * from './tools.mjs'
