import { createHash, createHmac } from 'node:crypto';

/** Length (hex digits) of a finding fingerprint: 64 bits of SHA-256 / HMAC-SHA-256. */
export const FINGERPRINT_HEX_LENGTH = 16;

export type Fingerprinter = (value: Buffer) => string;

export function createFingerprinter(key?: string | Buffer): Fingerprinter {
  if (key === undefined) {
    return (value) => createHash('sha256').update(value).digest('hex').slice(0, FINGERPRINT_HEX_LENGTH);
  }
  return (value) => createHmac('sha256', key).update(value).digest('hex').slice(0, FINGERPRINT_HEX_LENGTH);
}

/** Full SHA-256 hex of a value: the form allowlist `valueHashes` are written in. */
export function valueHash(value: string | Buffer): string {
  return createHash('sha256').update(value).digest('hex');
}
