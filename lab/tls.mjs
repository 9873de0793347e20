// Test certificates for the servers that offer TLS (PostgreSQL, MariaDB, Redis).
import { spawnSync } from 'node:child_process'
import { chmodSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/**
 * A private CA (`caFile`, what a client trusts) and a certificate for "localhost" signed by it
 * (`certFile`, `keyFile`), made with openssl in `dir`.
 */
export function makeCertificates(dir) {
  const caFile = join(dir, 'ca.crt')
  const caKey = join(dir, 'ca.key')
  const certFile = join(dir, 'server.crt')
  const keyFile = join(dir, 'server.key')
  const csr = join(dir, 'server.csr')
  const ext = join(dir, 'server.ext')
  writeFileSync(ext, 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n')
  const newKey = ['-newkey', 'rsa:2048', '-nodes']
  const steps = [
    ['req', '-x509', ...newKey, '-days', '2', '-subj', '/CN=distlock test CA', '-keyout', caKey, '-out', caFile],
    ['req', ...newKey, '-subj', '/CN=localhost', '-keyout', keyFile, '-out', csr],
    [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      caFile,
      '-CAkey',
      caKey,
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      ext,
      '-out',
      certFile,
    ],
  ]
  for (const step of steps) {
    const res = spawnSync('openssl', step, { encoding: 'utf8', timeout: 60_000 })
    if (res.status !== 0) throw new Error(`openssl could not make a test certificate: ${res.stderr || res.error}`)
  }
  chmodSync(keyFile, 0o600)
  return { caFile, certFile, keyFile }
}
