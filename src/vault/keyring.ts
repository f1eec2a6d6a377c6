import { randomBytes } from 'node:crypto';
import { CoatcheckError } from '../core/errors.js';
import type { Store, StoreTx } from '../store/types.js';
import { deriveIndexKeys, type IndexKeys, KEY_LENGTH, type MasterKey } from './envelope.js';

/**
 * The keyring ties a store to its master key. The store holds one random index key,
 * sealed under the master key; opening the store with another master key fails
 * authentication, which is how a wrong key is told apart from a damaged store.
 */
const INDEX_KEY_META = 'index_key';
const MASTER_KID_META = 'master_kid';
const INDEX_KEY_AAD = 'coatcheck index key';
/** The forward proxy's CA private key (PKCS#8), sealed under the master key; see vault/proxy-ca.ts. */
export const PROXY_CA_KEY_META = 'proxy_ca_key';
export const PROXY_CA_KEY_AAD = 'coatcheck proxy ca key';

export interface Keyring {
  readonly master: MasterKey;
  readonly index: IndexKeys;
}

export async function isInitialized(store: Store): Promise<boolean> {
  return (await store.getMeta(INDEX_KEY_META)) !== null;
}

/** First start: make the index key and seal it. Idempotent only in the sense that it refuses to run twice. */
export async function initializeKeyring(store: Store, master: MasterKey): Promise<Keyring> {
  const indexKey = randomBytes(KEY_LENGTH);
  await store.transaction(async (tx) => {
    if ((await tx.getMeta(INDEX_KEY_META)) !== null) {
      throw new CoatcheckError('CC_ERR_HOME_EXISTS', 'this store is already initialized');
    }
    await tx.setMeta(INDEX_KEY_META, master.wrap(indexKey, INDEX_KEY_AAD).toString('base64'));
    await tx.setMeta(MASTER_KID_META, master.kid);
  });
  return { master, index: deriveIndexKeys(indexKey) };
}

async function unsealIndexKey(ops: Pick<StoreTx, 'getMeta'>, master: MasterKey): Promise<Buffer> {
  const sealed = await ops.getMeta(INDEX_KEY_META);
  if (sealed === null) {
    throw new CoatcheckError('CC_ERR_HOME_MISSING', 'the store is not initialized (run `coatcheck init`)');
  }
  const indexKey = master.unwrap(Buffer.from(sealed, 'base64'), INDEX_KEY_AAD);
  if (indexKey === null) {
    const kid = await ops.getMeta(MASTER_KID_META);
    if (kid !== null && kid !== master.kid) {
      throw new CoatcheckError(
        'CC_ERR_MASTER_KEY_WRONG',
        `the master key ${master.kid} does not open this store (it expects ${kid})`,
        {
          details: { given: master.kid, expected: kid },
        },
      );
    }
    throw new CoatcheckError(
      'CC_ERR_STORE_CORRUPT',
      'the sealed index key does not authenticate: the store was altered',
    );
  }
  return indexKey;
}

export async function openKeyring(store: Store, master: MasterKey): Promise<Keyring> {
  const indexKey = await unsealIndexKey(store, master);
  return { master, index: deriveIndexKeys(indexKey) };
}

export function dataKeyAad(secretId: string): string {
  return `coatcheck data key ${secretId}`;
}

export function valueAad(secretId: string): string {
  return `coatcheck secret ${secretId}`;
}

/**
 * Rewrap the index key, the proxy CA key (when there is one) and every live data key under `next`, inside `tx`. Tickets, agent
 * keys and the audit chain depend on the index key's content, which does not change.
 * Returns the number of data keys rewrapped.
 */
export async function rewrapAll(tx: StoreTx, current: MasterKey, next: MasterKey): Promise<number> {
  const indexKey = await unsealIndexKey(tx, current);
  await tx.setMeta(INDEX_KEY_META, next.wrap(indexKey, INDEX_KEY_AAD).toString('base64'));
  await tx.setMeta(MASTER_KID_META, next.kid);
  const caSealed = await tx.getMeta(PROXY_CA_KEY_META);
  if (caSealed !== null) {
    const caKey = current.unwrap(Buffer.from(caSealed, 'base64'), PROXY_CA_KEY_AAD);
    if (caKey === null) {
      throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the sealed proxy CA key does not authenticate');
    }
    await tx.setMeta(PROXY_CA_KEY_META, next.wrap(caKey, PROXY_CA_KEY_AAD).toString('base64'));
    caKey.fill(0);
  }
  let count = 0;
  for (const secret of await tx.listSecrets()) {
    if (secret.wrappedKey === null) continue;
    const dataKey = current.unwrap(secret.wrappedKey, dataKeyAad(secret.id));
    if (dataKey === null) {
      throw new CoatcheckError(
        'CC_ERR_STORE_CORRUPT',
        `the data key of secret ${secret.id} does not authenticate`,
        {
          details: { secret: secret.id },
        },
      );
    }
    await tx.updateSecretKey(secret.id, next.wrap(dataKey, dataKeyAad(secret.id)), next.kid);
    dataKey.fill(0);
    count++;
  }
  return count;
}
