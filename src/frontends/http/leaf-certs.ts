import { generateKeyPairSync } from 'node:crypto';
import { createCertificate } from '../../core/x509.js';
import type { ProxyCa } from '../../vault/proxy-ca.js';

const LEAF_LIFETIME_MS = 7 * 24 * 3600 * 1000;
/** A cached leaf is replaced once it has this little life left. */
const RENEW_BEFORE_MS = 24 * 3600 * 1000;

/** A leaf certificate and its key, PEM, in memory only. */
export interface LeafCert {
  readonly key: string;
  /** The leaf then the CA. */
  readonly cert: string;
}

export interface LeafCerts {
  /** The certificate (and key) for `host`, minted under the CA on first use; the same object while cached. */
  get(host: string): LeafCert;
  readonly size: number;
}

/**
 * Leaf certificates, one per host, minted on demand and kept in a bounded LRU in memory.
 * Each leaf has its own P-256 key, generated here and never written anywhere.
 */
export function createLeafCerts(ca: ProxyCa, options: { max?: number; now?: () => number } = {}): LeafCerts {
  const max = options.max ?? 1000;
  const now = options.now ?? Date.now;
  const cache = new Map<string, { leaf: LeafCert; notAfter: number }>();
  return {
    get(host) {
      const key = host.toLowerCase();
      const hit = cache.get(key);
      const t = now();
      if (hit !== undefined && hit.notAfter - t > RENEW_BEFORE_MS) {
        cache.delete(key);
        cache.set(key, hit);
        return hit.leaf;
      }
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const notAfter = t + LEAF_LIFETIME_MS;
      const cert = createCertificate({
        subject: key.slice(0, 64),
        issuer: { subject: ca.subject, organization: ca.organization, key: ca.key, publicKey: ca.publicKey },
        publicKey,
        notBefore: new Date(t - 3600_000),
        notAfter: new Date(notAfter),
        ca: false,
        hosts: [key],
      });
      const leaf: LeafCert = {
        key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
        cert: `${cert}${ca.cert}`,
      };
      cache.delete(key);
      cache.set(key, { leaf, notAfter });
      while (cache.size > max) cache.delete(cache.keys().next().value!);
      return leaf;
    },
    get size() {
      return cache.size;
    },
  };
}
