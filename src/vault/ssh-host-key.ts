import { createHash } from 'node:crypto';
import ssh2 from 'ssh2';
import type { AuditLog } from '../audit/audit-log.js';
import { CoatcheckError } from '../core/errors.js';
import type { Store } from '../store/types.js';
import {
  type MasterKeys,
  SSH_HOST_KEY_AAD,
  SSH_HOST_KEY_META,
  SSH_HOST_KID_META,
  sealingKey,
  unwrapMetaBlob,
} from './keyring.js';

/**
 * The SSH front-end's host key (ed25519, OpenSSH format). Made at `init` (or on first use
 * for older homes), stored only sealed under the master key (its kid in
 * `ssh_host_key_kid`; rewrapped on master-key rotation by `rewrapMeta`), its public half
 * in clear. `rotateSshHostKey` replaces it; clients then see a changed host key.
 */
export const SSH_HOST_PUBLIC_META = 'ssh_host_public';

export interface SshHostKey {
  /** The private key, OpenSSH format (in memory only). */
  readonly private: Buffer;
  /** `ssh-ed25519 AAAA…` */
  readonly public: string;
  /** `SHA256:…` as OpenSSH prints it. */
  readonly fingerprint: string;
}

/** `SHA256:<base64 without padding>` of an OpenSSH public key line, as `ssh-keygen -l` prints it. */
export function sshFingerprint(publicLine: string): string {
  const blob = Buffer.from(publicLine.trim().split(/\s+/)[1] ?? '', 'base64');
  const parsed = ssh2.utils.parseKey(blob);
  const raw = parsed instanceof Error ? blob : parsed.getPublicSSH();
  return `SHA256:${createHash('sha256').update(raw).digest('base64').replace(/=+$/, '')}`;
}

/** Whether `privateKey` (OpenSSH format) parses and its public half is `publicLine`'s. */
function keyMatches(privateKey: Buffer, publicLine: string): boolean {
  const parsed = ssh2.utils.parseKey(privateKey);
  return (
    !(parsed instanceof Error) && parsed.getPublicSSH().toString('base64') === publicLine.split(/\s+/)[1]
  );
}

/** Attempts at a well-formed key pair before giving up (each fails with probability 1/256). */
const MAKE_ATTEMPTS = 8;

/**
 * A new ed25519 host key pair, checked. The ssh2 library writes an ed25519 public key whose
 * first byte is zero as if it were a number, without that byte (31 bytes, not 32): the
 * pair it returns then does not parse. That is one key in 256 (76 of 20,000 measured); such
 * a key, once stored, kept the SSH front-end from starting. A pair that does not check is
 * made again.
 */
function makeKeyPair(): { private: Buffer; public: string } {
  for (let attempt = 0; attempt < MAKE_ATTEMPTS; attempt++) {
    const made = ssh2.utils.generateKeyPairSync('ed25519', { comment: 'coatcheck' });
    const privateKey = Buffer.from(made.private);
    const publicLine = made.public.trim();
    if (keyMatches(privateKey, publicLine)) return { private: privateKey, public: publicLine };
    privateKey.fill(0);
  }
  throw new CoatcheckError('CC_ERR_INTERNAL', 'no well-formed SSH host key could be made');
}

async function writeKey(store: Store, masters: MasterKeys): Promise<void> {
  const made = makeKeyPair();
  const privateKey = made.private;
  try {
    await store.transaction(async (tx) => {
      if ((await tx.getMeta(SSH_HOST_PUBLIC_META)) !== null) return;
      const master = await sealingKey(tx, masters);
      await tx.setMeta(SSH_HOST_KEY_META, master.wrap(privateKey, SSH_HOST_KEY_AAD).toString('base64'));
      await tx.setMeta(SSH_HOST_KID_META, master.kid);
      await tx.setMeta(SSH_HOST_PUBLIC_META, made.public);
    });
  } finally {
    privateKey.fill(0);
  }
}

/** Make the host key if the store has none. Concurrent callers agree on one (the first commit wins). */
export async function ensureSshHostKey(store: Store, masters: MasterKeys): Promise<void> {
  if ((await store.getMeta(SSH_HOST_PUBLIC_META)) !== null) return;
  await writeKey(store, masters);
}

/**
 * Replace the host key, audited in the same transaction (`ssh.hostkey.rotated`). Clients
 * see a new host key; a running SSH listener serves the new one after a restart.
 */
export async function rotateSshHostKey(
  store: Store,
  masters: MasterKeys,
  audit: AuditLog,
  actor: string,
): Promise<{ public: string; fingerprint: string }> {
  const made = makeKeyPair();
  const privateKey = made.private;
  const publicLine = made.public;
  const fingerprint = sshFingerprint(publicLine);
  const previous = await store.getMeta(SSH_HOST_PUBLIC_META);
  try {
    await audit.append(
      {
        type: 'ssh.hostkey.rotated',
        actor,
        data: { fingerprint, previous: previous === null ? null : sshFingerprint(previous) },
      },
      async (tx) => {
        const master = await sealingKey(tx, masters);
        await tx.setMeta(SSH_HOST_KEY_META, master.wrap(privateKey, SSH_HOST_KEY_AAD).toString('base64'));
        await tx.setMeta(SSH_HOST_KID_META, master.kid);
        await tx.setMeta(SSH_HOST_PUBLIC_META, publicLine);
      },
    );
  } finally {
    privateKey.fill(0);
  }
  return { public: publicLine, fingerprint };
}

/** The public half and its fingerprint (making the key first if needed). */
export async function sshHostPublicKey(
  store: Store,
  masters: MasterKeys,
): Promise<{ public: string; fingerprint: string }> {
  await ensureSshHostKey(store, masters);
  const publicLine = (await store.getMeta(SSH_HOST_PUBLIC_META))!;
  return { public: publicLine, fingerprint: sshFingerprint(publicLine) };
}

/** Open the host key (unsealed in memory), making it first if needed. */
export async function openSshHostKey(store: Store, masters: MasterKeys): Promise<SshHostKey> {
  await ensureSshHostKey(store, masters);
  const publicLine = await store.getMeta(SSH_HOST_PUBLIC_META);
  const sealed = await store.getMeta(SSH_HOST_KEY_META);
  if (publicLine === null || sealed === null) {
    throw new CoatcheckError(
      'CC_ERR_STORE_CORRUPT',
      'the SSH host key or its sealed private half is missing',
    );
  }
  const kid = await store.getMeta(SSH_HOST_KID_META);
  const privateKey = unwrapMetaBlob(
    masters,
    Buffer.from(sealed, 'base64'),
    SSH_HOST_KEY_AAD,
    kid,
    'the SSH host key',
  );
  if (privateKey === null) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the sealed SSH host key does not authenticate');
  }
  if (!keyMatches(privateKey, publicLine)) {
    privateKey.fill(0);
    // A key made before makeKeyPair checked them may be one of these: a new one mends it.
    throw new CoatcheckError(
      'CC_ERR_STORE_CORRUPT',
      'the SSH host key does not match its public half; replace it with `coatcheck ssh host-key --rotate` (agents must then accept the new host key)',
    );
  }
  return { private: privateKey, public: publicLine, fingerprint: sshFingerprint(publicLine) };
}
