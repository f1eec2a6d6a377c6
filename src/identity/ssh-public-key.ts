import { createHash, createPublicKey } from 'node:crypto';
import { CoatcheckError } from '../core/errors.js';
import type { AgentSshKeyRecord, StoreOps } from '../store/types.js';

/** Key types an agent may register (their signatures are verified by ssh2). */
export const SSH_KEY_TYPES: ReadonlySet<string> = new Set([
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'ssh-rsa',
]);

/** Longest public key file read (an RSA 16384-bit key line is about 2.8 KiB). */
export const MAX_PUBLIC_KEY_TEXT = 16 * 1024;
const MIN_RSA_BITS = 2048;

export interface SshPublicKey {
  readonly type: string;
  /** The key blob (the wire form), as in the second field of an OpenSSH key line. */
  readonly blob: Buffer;
  /** `SHA256:…` as OpenSSH prints it (`ssh-keygen -lf`). */
  readonly fingerprint: string;
  readonly comment: string;
}

function invalid(message: string, reason: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_SSH_KEY_INVALID', message, { details: { reason } });
}

/** `SHA256:` and the unpadded base64 of the blob's SHA-256, as OpenSSH prints it. */
export function sshKeyFingerprint(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/**
 * Read one OpenSSH public key line (`TYPE BASE64 [comment]`, as in `id_ed25519.pub`).
 * Refused with CC_ERR_SSH_KEY_INVALID: a private key (never echoed), more than one key,
 * authorized_keys options, certificates and other types, a blob that does not parse as
 * its type, RSA under 2048 bits. ssh2 parses the key (loaded only when a key is read).
 */
export async function parseSshPublicKey(text: string): Promise<SshPublicKey> {
  if (text.length > MAX_PUBLIC_KEY_TEXT)
    throw invalid(`the public key file is longer than ${MAX_PUBLIC_KEY_TEXT} bytes`, 'too-long');
  if (/PRIVATE KEY/.test(text))
    throw invalid(
      'this is a private key: register the public key (the .pub file) and keep the private key with the agent',
      'private-key',
    );
  const lines = text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
  if (lines.length !== 1)
    throw invalid('give exactly one public key (one line: TYPE BASE64 [comment])', 'lines');
  const [type = '', data = '', ...rest] = lines[0]!.split(/\s+/);
  if (!SSH_KEY_TYPES.has(type))
    throw invalid(
      `the key type must be one of ${[...SSH_KEY_TYPES].join(', ')} (no options, no certificates)`,
      'type',
    );
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(data)) throw invalid('the key is not base64', 'base64');
  const blob = Buffer.from(data, 'base64');
  const { utils } = (await import('ssh2')).default;
  const parsed = utils.parseKey(`${type} ${data}`);
  if (parsed instanceof Error || Array.isArray(parsed))
    throw invalid('the key does not parse as an SSH public key', 'parse');
  if (parsed.isPrivateKey() || parsed.type !== type || !parsed.getPublicSSH().equals(blob))
    throw invalid('the key does not parse as an SSH public key of its type', 'parse');
  if (type === 'ssh-rsa') {
    const bits = createPublicKey(parsed.getPublicPEM()).asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) throw invalid(`RSA keys need at least ${MIN_RSA_BITS} bits`, 'rsa-bits');
  }
  const comment = rest
    .join(' ')
    .replace(/[^\x20-\x7e]/g, '')
    .slice(0, 64);
  return { type, blob, fingerprint: sshKeyFingerprint(blob), comment };
}

/**
 * The live key registered to this agent whose blob is `blob`, or null (an unregistered
 * key, another agent's key, a removed key). Read from the store at every login, no cache.
 */
export async function liveAgentSshKey(
  store: Pick<StoreOps, 'getLiveAgentSshKey'>,
  agentId: string,
  blob: Buffer,
): Promise<AgentSshKeyRecord | null> {
  if (blob.length === 0 || blob.length > MAX_PUBLIC_KEY_TEXT) return null;
  const record = await store.getLiveAgentSshKey(sshKeyFingerprint(blob));
  if (record === null || record.agentId !== agentId) return null;
  return Buffer.from(record.publicKey, 'base64').equals(blob) ? record : null;
}
