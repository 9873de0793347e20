// TLS to PostgreSQL through the connection string's sslmode, and password logins, against a
// private cluster that offers TLS with a certificate for "localhost" from a fresh private CA and
// requires a SCRAM password over TCP.
import { Client } from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { LockBackendError, PostgresLockProvider } from 'distlock'

import type { Cluster } from '../lab/index.mjs' with { 'resolution-mode': 'import' }

let cluster: Cluster
const providers: PostgresLockProvider[] = []

beforeAll(async () => {
  const { startCluster } = await import('../lab/index.mjs')
  const started = await startCluster({ ssl: true, password: 'pg secret' })
  if (!started) throw new Error('the TLS test needs the PostgreSQL server binaries (initdb, pg_ctl) and openssl')
  cluster = started
}, 120_000)

afterAll(async () => {
  await Promise.all(providers.map((p) => p.close()))
  cluster?.stop()
})

function provider(connectionString: string): PostgresLockProvider {
  const p = new PostgresLockProvider({ connectionString })
  providers.push(p)
  return p
}

async function sslOf(app: string): Promise<boolean[]> {
  const admin = new Client({ connectionString: cluster.url })
  await admin.connect()
  try {
    const r = await admin.query(
      'SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1',
      [app],
    )
    return r.rows.map((x) => x.ssl as boolean)
  } finally {
    await admin.end()
  }
}

describe('PostgreSQL over TLS', () => {
  it('sslmode=require encrypts without checking the certificate', async () => {
    const p = provider(`${cluster.url}?sslmode=require&application_name=dl_tls_require`)
    const h = await p.createLock('tls-require').acquire({ timeoutMs: 5000 })
    expect(await sslOf('dl_tls_require')).toEqual([true])
    await h.release()
  })

  it('sslmode=disable does not encrypt', async () => {
    const p = provider(`${cluster.url}?sslmode=disable&application_name=dl_tls_disable`)
    const h = await p.createLock('tls-disable').acquire({ timeoutMs: 5000 })
    expect(await sslOf('dl_tls_disable')).toEqual([false])
    await h.release()
  })

  it('sslmode=verify-full accepts the server whose certificate sslrootcert vouches for', async () => {
    const url = `postgres://postgres:pg%20secret@localhost:${cluster.port}/postgres?sslmode=verify-full&sslrootcert=${cluster.certFile}&application_name=dl_tls_full`
    const h = await provider(url).createLock('tls-full').acquire({ timeoutMs: 5000 })
    expect(await sslOf('dl_tls_full')).toEqual([true])
    await h.release()
  })

  it('sslmode=verify-full rejects an untrusted certificate with a LockBackendError', async () => {
    const err = await provider(`postgres://postgres:pg%20secret@localhost:${cluster.port}/postgres?sslmode=verify-full`)
      .createLock('tls-untrusted')
      .acquire({ timeoutMs: 5000 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toMatch(/certificate/i)
  })

  it('verify-full checks the host name; verify-ca does not', async () => {
    const base = `${cluster.url}?sslrootcert=${cluster.certFile}`
    const err = await provider(`${base}&sslmode=verify-full`)
      .createLock('tls-name')
      .acquire({ timeoutMs: 5000 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toMatch(/certificate/i)
    const h = await provider(`${base}&sslmode=verify-ca`).createLock('tls-ca').acquire({ timeoutMs: 5000 })
    await h.release()
  })

  it('a wrong password is a LockBackendError that says so (and never shows the password)', async () => {
    const err = await provider(cluster.url.replace('pg%20secret', 'wrong%20guess'))
      .createLock('auth')
      .acquire({ timeoutMs: 5000 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(LockBackendError)
    expect((err as Error).message).toMatch(/password authentication failed/)
    expect((err as Error).message).not.toContain('wrong')
  })
})
