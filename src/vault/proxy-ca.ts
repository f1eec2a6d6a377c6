import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  X509Certificate,
} from 'node:crypto';
import { CoatcheckError } from '../core/errors.js';
import { createCertificate } from '../core/x509.js';
import type { Store } from '../store/types.js';
import {
  type MasterKeys,
  PROXY_CA_KEY_AAD,
  PROXY_CA_KEY_META,
  PROXY_CA_KID_META,
  sealingKey,
  unwrapMetaBlob,
} from './keyring.js';

/**
 * The forward proxy's local certificate authority. Made at `init` (or, for homes made
 * before it existed, on first use); its private key is stored only sealed under the
 * master key (its kid in `proxy_ca_key_kid`; rewrapped on rotation by `rewrapMeta`), its certificate in clear. The key
 * is opened in memory by the process that serves the proxy and never written anywhere.
 */
export const PROXY_CA_CERT_META = 'proxy_ca_cert';
const CA_SUBJECT = 'coatcheck local CA';
const CA_ORGANIZATION = 'coatcheck';
const CA_LIFETIME_MS = 10 * 365 * 24 * 3600 * 1000;

export interface ProxyCa {
  /** PEM. */
  readonly cert: string;
  readonly subject: string;
  readonly organization: string;
  readonly key: KeyObject;
  readonly publicKey: KeyObject;
  /** SHA-256 fingerprint of the certificate (colon-separated hex). */
  readonly fingerprint: string;
}

function makeCa(now: Date): { cert: string; pkcs8: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const cert = createCertificate({
    subject: CA_SUBJECT,
    organization: CA_ORGANIZATION,
    issuer: { subject: CA_SUBJECT, organization: CA_ORGANIZATION, key: privateKey, publicKey },
    publicKey,
    notBefore: new Date(now.getTime() - 3600_000),
    notAfter: new Date(now.getTime() + CA_LIFETIME_MS),
    ca: true,
  });
  return { cert, pkcs8: privateKey.export({ type: 'pkcs8', format: 'der' }) };
}

/** Make the CA if the store has none. Concurrent callers agree on one (the first commit wins). */
export async function ensureProxyCa(store: Store, masters: MasterKeys, now = new Date()): Promise<void> {
  if ((await store.getMeta(PROXY_CA_CERT_META)) !== null) return;
  const made = makeCa(now);
  try {
    await store.transaction(async (tx) => {
      if ((await tx.getMeta(PROXY_CA_CERT_META)) !== null) return;
      // Sealed under the active key read in this transaction (never a key being rotated away).
      const master = await sealingKey(tx, masters);
      await tx.setMeta(PROXY_CA_KEY_META, master.wrap(made.pkcs8, PROXY_CA_KEY_AAD).toString('base64'));
      await tx.setMeta(PROXY_CA_KID_META, master.kid);
      await tx.setMeta(PROXY_CA_CERT_META, made.cert);
    });
  } finally {
    made.pkcs8.fill(0);
  }
}

/** The CA certificate (PEM), making the CA first if needed. */
export async function proxyCaCertificate(store: Store, masters: MasterKeys): Promise<string> {
  await ensureProxyCa(store, masters);
  return (await store.getMeta(PROXY_CA_CERT_META))!;
}

/** Open the CA (key unsealed in memory), making it first if needed. */
export async function openProxyCa(store: Store, masters: MasterKeys): Promise<ProxyCa> {
  await ensureProxyCa(store, masters);
  const cert = await store.getMeta(PROXY_CA_CERT_META);
  const sealed = await store.getMeta(PROXY_CA_KEY_META);
  if (cert === null || sealed === null) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the proxy CA certificate or its sealed key is missing');
  }
  const kid = await store.getMeta(PROXY_CA_KID_META);
  const pkcs8 = unwrapMetaBlob(
    masters,
    Buffer.from(sealed, 'base64'),
    PROXY_CA_KEY_AAD,
    kid,
    'the proxy CA key',
  );
  if (pkcs8 === null) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the sealed proxy CA key does not authenticate');
  }
  const key = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
  pkcs8.fill(0);
  const x509 = new X509Certificate(cert);
  if (!x509.checkPrivateKey(key)) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the proxy CA key does not match its certificate');
  }
  return {
    cert,
    subject: CA_SUBJECT,
    organization: CA_ORGANIZATION,
    key,
    publicKey: createPublicKey(key),
    fingerprint: x509.fingerprint256,
  };
}
