import { SecretValue } from '../core/secret-value.js';
import type { SecretRecord, StoreTx } from '../store/types.js';
import { KeyedHashMemo, keyedHash, newDataKey, open, seal } from './envelope.js';
import { dataKeyAad, type Keyring, sealingKey, unwrapDataKey, valueAad } from './keyring.js';
import { refuse } from './model.js';

/**
 * The vault's one door to the keyring (ADR 0014, ADR 0017): keyed hashes of tickets and
 * values, sealing a new value, wrapping its data key under the kid the store names active
 * (read in the writing transaction, so nothing is written under a key a rotation moved
 * away from), and opening a sealed value by the kid its row names.
 */
export class KeyService {
  readonly #keys: Keyring;
  #tickets: KeyedHashMemo | null = null;

  constructor(keys: Keyring) {
    this.#keys = keys;
  }

  ticketHash(ticket: string): string {
    const key = this.#keys.index.lookup;
    // A new memo if the lookup key is ever another Buffer: never a hash under an old key.
    if (this.#tickets?.key !== key) this.#tickets = new KeyedHashMemo(key);
    return this.#tickets.hash(ticket);
  }

  /** Keyed fingerprint of a value: stable, comparable, useless without the index key. */
  fingerprint(value: Buffer | string): string {
    return `fp_${keyedHash(this.#keys.index.fingerprint, value).slice(0, 24)}`;
  }

  /**
   * Seal `value` for secret `id` under a fresh data key. The caller wraps the data key in
   * its writing transaction (`wrapDataKey`) and zeroes it afterwards.
   */
  sealValue(id: string, value: Buffer): { dataKey: Buffer; ciphertext: Buffer } {
    const dataKey = newDataKey();
    return { dataKey, ciphertext: seal(dataKey, value, valueAad(id)) };
  }

  /**
   * Wrap a data key under the key the store names active, read inside `tx` (see
   * sealingKey): a replica without that key reloads once and otherwise refuses the write.
   */
  async wrapDataKey(
    tx: StoreTx,
    id: string,
    dataKey: Buffer,
  ): Promise<{ wrappedKey: Buffer; keyId: string }> {
    const master = await sealingKey(tx, this.#keys.masters);
    return { wrappedKey: master.wrap(dataKey, dataKeyAad(id)), keyId: master.kid };
  }

  /** Decrypt a secret by record, for credential injection and exchange; null once erased. */
  decrypt(record: SecretRecord): SecretValue | null {
    if (record.wrappedKey === null || record.ciphertext === null) return null;
    // Unwrapped by the kid the row names: a key this replica lacks is reloaded once, then
    // refused as CC_ERR_MASTER_KEY_UNAVAILABLE naming that kid.
    const dataKey = unwrapDataKey(this.#keys.masters, record);
    const value = open(dataKey, record.ciphertext, valueAad(record.id));
    dataKey.fill(0);
    if (value === null) {
      throw refuse('CC_ERR_STORE_CORRUPT', `the value of secret ${record.id} does not authenticate`, {
        secret: record.id,
      });
    }
    return new SecretValue(value);
  }
}
