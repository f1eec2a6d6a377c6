import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext, type SecureContext } from 'node:tls';
import { writeFileDurably } from '../../config/home.js';
import { CoatcheckError } from '../../core/errors.js';

export interface TlsFiles {
  readonly cert: string;
  readonly key: string;
  /** True when the pair was generated here (self-signed, for local use). */
  readonly generated: boolean;
}

export const GENERATED_CERT = 'postgres-tls.crt';
export const GENERATED_KEY = 'postgres-tls.key';

/**
 * The listener's certificate: the configured pair, or a self-signed P-256 pair kept in
 * the home (created on first start with the `openssl` CLI; key file 0600). Clients that
 * want verify-full point sslrootcert at the generated certificate.
 */
export function listenerTls(homeDir: string, configured: { cert?: string; key?: string }): TlsFiles {
  if (configured.cert !== undefined || configured.key !== undefined) {
    if (configured.cert === undefined || configured.key === undefined) {
      throw new CoatcheckError('CC_ERR_CONFIG_INVALID', 'postgres.tlsCert and postgres.tlsKey go together', {
        details: { field: 'postgres.tlsCert' },
      });
    }
    return { cert: configured.cert, key: configured.key, generated: false };
  }
  const cert = join(homeDir, GENERATED_CERT);
  const key = join(homeDir, GENERATED_KEY);
  if (!existsSync(cert) || !existsSync(key)) {
    const work = mkdtempSync(join(tmpdir(), 'coatcheck-tls-'));
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:P-256',
          '-nodes',
          '-days',
          '825',
          '-subj',
          '/CN=coatcheck postgres front-end',
          '-addext',
          'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1',
          '-keyout',
          join(work, 'key.pem'),
          '-out',
          join(work, 'cert.pem'),
        ],
        { stdio: 'ignore' },
      );
      writeFileDurably(key, readFileSync(join(work, 'key.pem'), 'utf8'), 0o600);
      writeFileDurably(cert, readFileSync(join(work, 'cert.pem'), 'utf8'), 0o644);
      chmodSync(key, 0o600);
    } catch (error) {
      throw new CoatcheckError(
        'CC_ERR_CONFIG_INVALID',
        'cannot generate the PostgreSQL listener certificate (is `openssl` installed?); set postgres.tlsCert and postgres.tlsKey',
        { cause: error, details: { field: 'postgres.tlsCert' } },
      );
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
  return { cert, key, generated: true };
}

export function secureContext(files: TlsFiles): SecureContext {
  try {
    return createSecureContext({
      cert: readFileSync(files.cert),
      key: readFileSync(files.key),
      minVersion: 'TLSv1.2',
    });
  } catch (error) {
    throw new CoatcheckError(
      'CC_ERR_CONFIG_INVALID',
      'the PostgreSQL listener certificate or key cannot be loaded',
      {
        cause: error,
        details: { field: 'postgres.tlsCert' },
      },
    );
  }
}
