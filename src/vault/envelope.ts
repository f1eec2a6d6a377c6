import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { CoatcheckError } from '../core/errors.js';

/**
 * Envelope encryption. Every secret has its own 256-bit data key; the value is sealed
 * with AES-256-GCM under that key, and the data key is sealed under the master key.
 * Associated data binds each sealed blob to its row, so blobs cannot be swapped between
 * secrets. Blob layout: version (1) | iv (12) | tag (16) | ciphertext.
 */
const VERSION = 1;
const IV_LENGTH = 12;
const TAG_LENGTH = 16;
export const KEY_LENGTH = 32;

export function seal(key: Buffer, plaintext: Buffer, aad: string): Buffer {
  const iv = randomBytes(IV_LENGTH);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.from([VERSION]), iv, cipher.getAuthTag(), ciphertext]);
}

/** Returns null when the blob does not authenticate (wrong key, or altered data). */
export function open(key: Buffer, blob: Buffer, aad: string): Buffer | null {
  if (blob.length < 1 + IV_LENGTH + TAG_LENGTH || blob[0] !== VERSION) return null;
  const iv = blob.subarray(1, 1 + IV_LENGTH);
  const tag = blob.subarray(1 + IV_LENGTH, 1 + IV_LENGTH + TAG_LENGTH);
  const decipher = createDecipheriv('aes-256-gcm', key, iv);
  decipher.setAAD(Buffer.from(aad, 'utf8'));
  decipher.setAuthTag(tag);
  try {
    return Buffer.concat([decipher.update(blob.subarray(1 + IV_LENGTH + TAG_LENGTH)), decipher.final()]);
  } catch {
    return null;
  }
}

export function newDataKey(): Buffer {
  return randomBytes(KEY_LENGTH);
}

/** The master key: 32 bytes, from COATCHECK_MASTER_KEY or the 0600 key file (base64). */
export class MasterKey {
  readonly #key: Buffer;
  /** Short, non-secret id of this key (HMAC of a constant), stored beside wrapped keys. */
  readonly kid: string;

  constructor(key: Buffer) {
    if (key.length !== KEY_LENGTH) {
      throw new CoatcheckError('CC_ERR_MASTER_KEY_INVALID', 'master key must be 32 bytes (base64-encoded)');
    }
    this.#key = Buffer.from(key);
    this.kid = createHmac('sha256', this.#key).update('coatcheck master key id').digest('hex').slice(0, 16);
  }

  static generate(): MasterKey {
    return new MasterKey(randomBytes(KEY_LENGTH));
  }

  static fromBase64(text: string): MasterKey {
    const trimmed = text.trim();
    if (!/^[A-Za-z0-9+/]{43}=$/.test(trimmed)) {
      throw new CoatcheckError(
        'CC_ERR_MASTER_KEY_INVALID',
        'master key must be 32 bytes, base64-encoded (44 characters)',
      );
    }
    return new MasterKey(Buffer.from(trimmed, 'base64'));
  }

  toBase64(): string {
    return this.#key.toString('base64');
  }

  wrap(dataKey: Buffer, aad: string): Buffer {
    return seal(this.#key, dataKey, aad);
  }

  unwrap(blob: Buffer, aad: string): Buffer | null {
    return open(this.#key, blob, aad);
  }

  toString(): string {
    return `[master key ${this.kid}]`;
  }

  toJSON(): string {
    return this.toString();
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

/**
 * Keys derived from the store's index key (random, made at init, wrapped by the master
 * key). They do not change when the master key rotates, so ticket hashes, agent key
 * hashes and the audit chain survive rotation.
 */
export interface IndexKeys {
  /** HMAC key for ticket and agent-key lookups. */
  readonly lookup: Buffer;
  /** HMAC key for the audit hash chain. */
  readonly audit: Buffer;
  /** HMAC key for secret fingerprints (audit shows these, never values). */
  readonly fingerprint: Buffer;
  /**
   * Wraps each session recording's data key (ADR 0018). Derived from the index key, so a
   * master-key rotation leaves recordings readable without rewrapping them.
   */
  readonly recording: Buffer;
}

export function deriveIndexKeys(indexKey: Buffer): IndexKeys {
  const derive = (info: string) =>
    Buffer.from(hkdfSync('sha256', indexKey, Buffer.alloc(0), info, KEY_LENGTH));
  return {
    lookup: derive('coatcheck lookup v1'),
    audit: derive('coatcheck audit chain v1'),
    fingerprint: derive('coatcheck fingerprint v1'),
    recording: derive('coatcheck recording key wrap v1'),
  };
}

export function keyedHash(key: Buffer, text: string | Buffer): string {
  return createHmac('sha256', key).update(text).digest('hex');
}

/**
 * `keyedHash` of credentials the data path sees again and again (an agent's key, a ticket:
 * every request carries them, and an HMAC is one of the larger costs of a small request).
 * A pure function, so nothing here can outlive a revocation: the record looked up by the
 * hash is cached, or not, by its owner. Bounded in size and in time (emptied when full, and
 * once `maxAgeMs` has passed since it was last emptied): it holds the credential texts it
 * was given, which a process that holds the keys to everything else adds little to, but
 * not for longer than a minute by default.
 */
export class KeyedHashMemo {
  readonly #key: Buffer;
  readonly #max: number;
  readonly #maxAgeMs: number;
  readonly #now: () => number;
  readonly #memo = new Map<string, string>();
  #emptiedAt: number;

  constructor(key: Buffer, options: { max?: number; maxAgeMs?: number; now?: () => number } = {}) {
    this.#key = key;
    this.#max = options.max ?? 4096;
    this.#maxAgeMs = options.maxAgeMs ?? 60_000;
    this.#now = options.now ?? (() => performance.now());
    this.#emptiedAt = this.#now();
  }

  /** The key this memo hashes under (a caller whose key can change makes a new memo). */
  get key(): Buffer {
    return this.#key;
  }

  /** Texts held now (never more than the bound). */
  get size(): number {
    return this.#memo.size;
  }

  hash(text: string): string {
    const now = this.#now();
    if (now - this.#emptiedAt >= this.#maxAgeMs) {
      this.#memo.clear();
      this.#emptiedAt = now;
    }
    let hash = this.#memo.get(text);
    if (hash === undefined) {
      hash = keyedHash(this.#key, text);
      if (this.#memo.size >= this.#max) {
        this.#memo.clear();
        this.#emptiedAt = now;
      }
      this.#memo.set(text, hash);
    }
    return hash;
  }
}
