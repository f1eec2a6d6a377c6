import { randomBytes } from 'node:crypto';
import { CoatcheckError } from '../core/errors.js';
import type { SecretRecord, Store, StoreTx } from '../store/types.js';
import { deriveIndexKeys, type IndexKeys, KEY_LENGTH, type MasterKey } from './envelope.js';

/**
 * The keyring ties a store to its master keys. The store holds one random index key,
 * sealed under a master key; every sealed blob records the id (kid) of the master key
 * that sealed it (secrets: the key_id column; the index key and the proxy CA key: meta
 * rows). The store also holds the keyring state: which kid new data is sealed under, and
 * the phase of a rotation in progress. See docs/adr/0014-keyring-rotation.md.
 */
const INDEX_KEY_META = 'index_key';
const MASTER_KID_META = 'master_kid';
const KEYRING_META = 'keyring';
const INDEX_KEY_AAD = 'coatcheck index key';
/** The forward proxy's CA private key (PKCS#8), sealed under a master key; see vault/proxy-ca.ts. */
export const PROXY_CA_KEY_META = 'proxy_ca_key';
/** Kid of the master key that sealed the CA key (absent in stores from before keyrings: try each key). */
export const PROXY_CA_KID_META = 'proxy_ca_key_kid';
export const PROXY_CA_KEY_AAD = 'coatcheck proxy ca key';
/** The SSH front-end's host key (OpenSSH format), sealed under a master key; see vault/ssh-host-key.ts. */
export const SSH_HOST_KEY_META = 'ssh_host_key';
export const SSH_HOST_KID_META = 'ssh_host_key_kid';
export const SSH_HOST_KEY_AAD = 'coatcheck ssh host key';

/**
 * The master keys this replica holds, by kid. Loaded from the key sources (key files,
 * COATCHECK_MASTER_KEY) and reloaded without restart: on a change notice, and once
 * whenever a kid is needed that is not loaded. A key once loaded stays loaded.
 */
export class MasterKeys {
  #keys = new Map<string, MasterKey>();
  readonly #load: () => readonly MasterKey[];

  constructor(load: () => readonly MasterKey[]) {
    this.#load = load;
    this.reload();
  }

  /** Read the sources again (throws what the loader throws; keys already loaded are kept). */
  reload(): void {
    const next = new Map(this.#keys);
    for (const key of this.#load()) next.set(key.kid, key);
    this.#keys = next;
  }

  get kids(): string[] {
    return [...this.#keys.keys()];
  }

  all(): MasterKey[] {
    return [...this.#keys.values()];
  }

  find(kid: string): MasterKey | undefined {
    return this.#keys.get(kid);
  }

  /**
   * The key `kid`. When it is not loaded, reload the sources once; still missing, fail
   * closed with CC_ERR_MASTER_KEY_UNAVAILABLE naming the kid (never CC_ERR_STORE_CORRUPT:
   * the data is fine, this replica lacks a key).
   */
  require(kid: string, what: string): MasterKey {
    const found = this.#keys.get(kid);
    if (found !== undefined) return found;
    this.reload();
    const reloaded = this.#keys.get(kid);
    if (reloaded !== undefined) return reloaded;
    throw new CoatcheckError(
      'CC_ERR_MASTER_KEY_UNAVAILABLE',
      `master key ${kid} (needed for ${what}) is not in this replica's keyring; add its key file to the keys directory`,
      { details: { keyId: kid } },
    );
  }
}

export interface Keyring {
  /** Every master key this replica holds (the active one, ones being rotated to, retired ones). */
  readonly masters: MasterKeys;
  readonly index: IndexKeys;
}

/**
 * Which kid seals new data, and where a rotation stands:
 *   steady     { active: A, next: null, previous: null }
 *   added      { active: A, next: B }     B is in the keyring; A still seals
 *   activated  { active: B, previous: A } B seals; data keys under A are being rewrapped
 *   retired    { active: B, retired: [A, …] } nothing in the store depends on A
 */
export interface KeyringState {
  readonly active: string;
  readonly next: string | null;
  readonly previous: string | null;
  readonly retired: readonly string[];
}

export async function readKeyringState(ops: Pick<StoreTx, 'getMeta'>): Promise<KeyringState> {
  const text = await ops.getMeta(KEYRING_META);
  if (text !== null) {
    let parsed: Partial<KeyringState>;
    try {
      parsed = JSON.parse(text) as Partial<KeyringState>;
    } catch {
      throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the keyring state is not readable');
    }
    if (typeof parsed.active !== 'string') {
      throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the keyring state names no active key');
    }
    return {
      active: parsed.active,
      next: typeof parsed.next === 'string' ? parsed.next : null,
      previous: typeof parsed.previous === 'string' ? parsed.previous : null,
      retired: Array.isArray(parsed.retired) ? parsed.retired.filter((k) => typeof k === 'string') : [],
    };
  }
  // Stores from before keyrings: the key that seals the index key is the only one in use.
  const kid = await ops.getMeta(MASTER_KID_META);
  if (kid === null) {
    throw new CoatcheckError('CC_ERR_HOME_MISSING', 'the store is not initialized (run `coatcheck init`)');
  }
  return { active: kid, next: null, previous: null, retired: [] };
}

export async function writeKeyringState(tx: StoreTx, state: KeyringState): Promise<void> {
  await tx.setMeta(KEYRING_META, JSON.stringify(state));
}

/**
 * The key new data is sealed under: the store's active kid, read inside `tx`. Store
 * transactions are serialised (ADR 0004), so a rotation cannot switch the active key
 * between this read and the commit: nothing is ever written under a key that a
 * concurrent rotation has already rewrapped away from.
 */
export async function sealingKey(tx: Pick<StoreTx, 'getMeta'>, masters: MasterKeys): Promise<MasterKey> {
  const state = await readKeyringState(tx);
  return masters.require(state.active, 'sealing new data');
}

export async function isInitialized(store: Store): Promise<boolean> {
  return (await store.getMeta(INDEX_KEY_META)) !== null;
}

/** First start: make the index key and seal it. Refuses to run twice. */
export async function initializeKeyring(
  store: Store,
  masters: MasterKeys,
  master: MasterKey,
): Promise<Keyring> {
  const indexKey = randomBytes(KEY_LENGTH);
  await store.transaction(async (tx) => {
    if ((await tx.getMeta(INDEX_KEY_META)) !== null) {
      // Another process (a replica starting at the same time) initialized it first.
      throw new CoatcheckError('CC_ERR_HOME_EXISTS', 'this store is already initialized', {
        details: { reason: 'store-initialized' },
      });
    }
    await tx.setMeta(INDEX_KEY_META, master.wrap(indexKey, INDEX_KEY_AAD).toString('base64'));
    await tx.setMeta(MASTER_KID_META, master.kid);
    await writeKeyringState(tx, { active: master.kid, next: null, previous: null, retired: [] });
  });
  return { masters, index: deriveIndexKeys(indexKey) };
}

async function unsealIndexKey(ops: Pick<StoreTx, 'getMeta'>, masters: MasterKeys): Promise<Buffer> {
  const sealed = await ops.getMeta(INDEX_KEY_META);
  if (sealed === null) {
    throw new CoatcheckError('CC_ERR_HOME_MISSING', 'the store is not initialized (run `coatcheck init`)');
  }
  const blob = Buffer.from(sealed, 'base64');
  const kid = await ops.getMeta(MASTER_KID_META);
  const master = kid === null ? undefined : masters.find(kid);
  if (kid !== null && master === undefined) {
    throw new CoatcheckError(
      'CC_ERR_MASTER_KEY_WRONG',
      `the master keys given (${masters.kids.join(', ')}) do not open this store (it expects ${kid})`,
      { details: { given: masters.kids, expected: kid } },
    );
  }
  for (const candidate of master === undefined ? masters.all() : [master]) {
    const indexKey = candidate.unwrap(blob, INDEX_KEY_AAD);
    if (indexKey !== null) return indexKey;
  }
  throw new CoatcheckError(
    'CC_ERR_STORE_CORRUPT',
    'the sealed index key does not authenticate: the store was altered',
  );
}

export async function openKeyring(store: Store, masters: MasterKeys): Promise<Keyring> {
  const indexKey = await unsealIndexKey(store, masters);
  return { masters, index: deriveIndexKeys(indexKey) };
}

export function dataKeyAad(secretId: string): string {
  return `coatcheck data key ${secretId}`;
}

export function valueAad(secretId: string): string {
  return `coatcheck secret ${secretId}`;
}

/**
 * Unwrap a secret's data key with the master key its row names. A row without a kid
 * (none are written so; kept for safety) is tried against every key held.
 */
export function unwrapDataKey(masters: MasterKeys, secret: SecretRecord): Buffer {
  if (secret.wrappedKey === null)
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', `secret ${secret.id} is erased`);
  const aad = dataKeyAad(secret.id);
  const candidates =
    secret.keyId === null
      ? masters.all()
      : [masters.require(secret.keyId, `the data key of secret ${secret.id}`)];
  for (const master of candidates) {
    const dataKey = master.unwrap(secret.wrappedKey, aad);
    if (dataKey !== null) return dataKey;
  }
  throw new CoatcheckError(
    'CC_ERR_STORE_CORRUPT',
    `the data key of secret ${secret.id} does not authenticate`,
    {
      details: { secret: secret.id },
    },
  );
}

/** Unwrap a meta blob (the proxy CA key) by its kid row, or by trying every key when the row predates kids. */
export function unwrapMetaBlob(
  masters: MasterKeys,
  blob: Buffer,
  aad: string,
  kid: string | null,
  what: string,
): Buffer | null {
  const candidates = kid === null ? masters.all() : [masters.require(kid, what)];
  for (const master of candidates) {
    const plain = master.unwrap(blob, aad);
    if (plain !== null) return plain;
  }
  return null;
}

/**
 * Rewrap the index key and the proxy CA key under `to` inside `tx`, when they are sealed
 * under another key. Tickets, agent keys and the audit chain depend on the index key's
 * content, which does not change.
 */
export async function rewrapMeta(tx: StoreTx, masters: MasterKeys, to: MasterKey): Promise<void> {
  if ((await tx.getMeta(MASTER_KID_META)) !== to.kid) {
    const indexKey = await unsealIndexKey(tx, masters);
    await tx.setMeta(INDEX_KEY_META, to.wrap(indexKey, INDEX_KEY_AAD).toString('base64'));
    await tx.setMeta(MASTER_KID_META, to.kid);
    indexKey.fill(0);
  }
  const caSealed = await tx.getMeta(PROXY_CA_KEY_META);
  const caKid = await tx.getMeta(PROXY_CA_KID_META);
  if (caSealed !== null && caKid !== to.kid) {
    const caKey = unwrapMetaBlob(
      masters,
      Buffer.from(caSealed, 'base64'),
      PROXY_CA_KEY_AAD,
      caKid,
      'the proxy CA key',
    );
    if (caKey === null) {
      throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the sealed proxy CA key does not authenticate');
    }
    await tx.setMeta(PROXY_CA_KEY_META, to.wrap(caKey, PROXY_CA_KEY_AAD).toString('base64'));
    await tx.setMeta(PROXY_CA_KID_META, to.kid);
    caKey.fill(0);
  }
  const hostSealed = await tx.getMeta(SSH_HOST_KEY_META);
  const hostKid = await tx.getMeta(SSH_HOST_KID_META);
  if (hostSealed !== null && hostKid !== to.kid) {
    const hostKey = unwrapMetaBlob(
      masters,
      Buffer.from(hostSealed, 'base64'),
      SSH_HOST_KEY_AAD,
      hostKid,
      'the SSH host key',
    );
    if (hostKey === null) {
      throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the sealed SSH host key does not authenticate');
    }
    await tx.setMeta(SSH_HOST_KEY_META, to.wrap(hostKey, SSH_HOST_KEY_AAD).toString('base64'));
    await tx.setMeta(SSH_HOST_KID_META, to.kid);
    hostKey.fill(0);
  }
}

/** The kids the store's sealed data depends on now (index key, proxy CA key, live data keys). */
export async function kidsInUse(ops: Pick<StoreTx, 'getMeta' | 'listSecrets'>): Promise<string[]> {
  const kids = new Set<string>();
  const indexKid = await ops.getMeta(MASTER_KID_META);
  if (indexKid !== null) kids.add(indexKid);
  const caKid = await ops.getMeta(PROXY_CA_KID_META);
  if (caKid !== null) kids.add(caKid);
  const hostKid = await ops.getMeta(SSH_HOST_KID_META);
  if (hostKid !== null) kids.add(hostKid);
  for (const secret of await ops.listSecrets()) {
    if (secret.wrappedKey !== null && secret.keyId !== null) kids.add(secret.keyId);
  }
  return [...kids].sort();
}
