import { randomBytes, timingSafeEqual } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { CoatcheckError } from '../core/errors.js';
import { keyedHash, MasterKey } from '../vault/envelope.js';

/**
 * The coatcheck home: config file, master key file (unless COATCHECK_MASTER_KEY is set),
 * admin key file, and the SQLite store. Key files are 0600; a key file readable by
 * anyone else is refused.
 */
export const CONFIG_FILE = 'coatcheck.yaml';
export const MASTER_KEY_FILE = 'master.key';
export const MASTER_KEY_NEXT_FILE = 'master.key.next';
export const ADMIN_KEY_FILE = 'admin.key';
export const SERVER_FILE = 'server.json';
export const ADMIN_KEY_PREFIX = 'cck_';

export interface Home {
  readonly dir: string;
  readonly configFile: string;
  readonly masterKeyFile: string;
  readonly adminKeyFile: string;
  readonly serverFile: string;
}

export function resolveHome(dir?: string, env: NodeJS.ProcessEnv = process.env): Home {
  const chosen =
    dir ??
    (env.COATCHECK_HOME !== undefined && env.COATCHECK_HOME !== '' ? env.COATCHECK_HOME : './.coatcheck');
  const abs = isAbsolute(chosen) ? chosen : resolve(chosen);
  return {
    dir: abs,
    configFile: join(abs, CONFIG_FILE),
    masterKeyFile: join(abs, MASTER_KEY_FILE),
    adminKeyFile: join(abs, ADMIN_KEY_FILE),
    serverFile: join(abs, SERVER_FILE),
  };
}

/** Write a file durably with the given mode: temp file, fsync, rename. */
export function writeFileDurably(path: string, content: string, mode: number): void {
  const temp = `${path}.tmp-${process.pid}`;
  const fd = openSync(temp, 'w', mode);
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  chmodSync(temp, mode);
  renameSync(temp, path);
}

/**
 * Create a file that must not exist yet (key material): temp file, fsync, then a hard
 * link to the final name, which fails if anything is already there. Unlike a rename it
 * can never replace a key that data depends on. Returns false when the file exists.
 */
export function writeFileExclusive(path: string, content: string, mode: number): boolean {
  const temp = `${path}.tmp-${process.pid}`;
  const fd = openSync(temp, 'w', mode);
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  chmodSync(temp, mode);
  try {
    linkSync(temp, path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    unlinkSync(temp);
  }
}

function readKeyFile(path: string, what: string): string {
  const stat = statSync(path);
  if ((stat.mode & 0o077) !== 0) {
    throw new CoatcheckError(
      'CC_ERR_MASTER_KEY_INVALID',
      `${what} ${path} is readable by group or others; run chmod 600 on it`,
      {
        details: { file: path },
      },
    );
  }
  return readFileSync(path, 'utf8');
}

/**
 * The master key: COATCHECK_MASTER_KEY wins; else the key file. If a rotation was
 * interrupted after the store was rewrapped, `master.key.next` holds the key in force:
 * the caller tries both (see `candidateMasterKeys`).
 */
export function candidateMasterKeys(home: Home, env: NodeJS.ProcessEnv = process.env): MasterKey[] {
  const fromEnv = env.COATCHECK_MASTER_KEY;
  if (fromEnv !== undefined && fromEnv !== '') return [MasterKey.fromBase64(fromEnv)];
  const keys: MasterKey[] = [];
  if (existsSync(home.masterKeyFile))
    keys.push(MasterKey.fromBase64(readKeyFile(home.masterKeyFile, 'master key file')));
  const next = join(home.dir, MASTER_KEY_NEXT_FILE);
  if (existsSync(next)) keys.push(MasterKey.fromBase64(readKeyFile(next, 'master key file')));
  if (keys.length === 0) {
    throw new CoatcheckError(
      'CC_ERR_MASTER_KEY_MISSING',
      `no master key: set COATCHECK_MASTER_KEY or restore ${home.masterKeyFile}`,
      {
        details: { file: home.masterKeyFile },
      },
    );
  }
  return keys;
}

export function masterKeyFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.COATCHECK_MASTER_KEY !== undefined && env.COATCHECK_MASTER_KEY !== '';
}

/** After a rotation committed: make the next key the key file. */
export function promoteNextMasterKey(home: Home): void {
  const next = join(home.dir, MASTER_KEY_NEXT_FILE);
  if (existsSync(next)) renameSync(next, home.masterKeyFile);
}

export function writeNextMasterKey(home: Home, key: MasterKey): void {
  const next = join(home.dir, MASTER_KEY_NEXT_FILE);
  if (!writeFileExclusive(next, `${key.toBase64()}\n`, 0o600)) {
    // A leftover from an interrupted rotation: the store may be sealed under it. Opening
    // the home resolves it (promoted or discarded); never overwrite it here.
    throw new CoatcheckError(
      'CC_ERR_KEYS_ROTATION_PENDING',
      `${next} exists from an interrupted rotation; restart the server (it resolves it) before rotating again`,
      { details: { file: next } },
    );
  }
}

/** The key files of a home that exist now (any of them means the home holds key material). */
export function existingKeyFiles(home: Home): string[] {
  return [home.masterKeyFile, join(home.dir, MASTER_KEY_NEXT_FILE), home.adminKeyFile].filter((f) =>
    existsSync(f),
  );
}

export function discardNextMasterKey(home: Home): void {
  const next = join(home.dir, MASTER_KEY_NEXT_FILE);
  if (existsSync(next)) unlinkSync(next);
}

export function ensureHomeDir(home: Home): void {
  mkdirSync(home.dir, { recursive: true, mode: 0o700 });
}

export function newAdminKey(): string {
  return ADMIN_KEY_PREFIX + randomBytes(32).toString('base64url');
}

export function readAdminKey(home: Home, env: NodeJS.ProcessEnv = process.env): string | null {
  if (env.COATCHECK_ADMIN_KEY) return env.COATCHECK_ADMIN_KEY;
  if (!existsSync(home.adminKeyFile)) return null;
  return readKeyFile(home.adminKeyFile, 'admin key file').trim();
}

export function adminKeyHash(lookupKey: Buffer, key: string): string {
  return keyedHash(lookupKey, `admin:${key}`);
}

export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
