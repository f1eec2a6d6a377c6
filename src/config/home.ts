import { randomBytes, timingSafeEqual } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
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

/** The keys directory of a home: one `<kid>.key` file per master key, never overwritten or deleted. */
export const KEYS_DIR = 'keys';

export function keysDirOf(home: Home, configured?: string): string {
  if (configured === undefined) return join(home.dir, KEYS_DIR);
  return isAbsolute(configured) ? configured : join(home.dir, configured);
}

/**
 * Every master key this replica can read: COATCHECK_MASTER_KEY (else the home's
 * `master.key`), a `master.key.next` left by an older version's interrupted rotation, and
 * every `*.key` file in the keys directory (keys added by rotation, retired keys kept for
 * backups). Called again without restart when a rotation adds a key.
 */
export function loadMasterKeys(
  home: Home,
  env: NodeJS.ProcessEnv = process.env,
  keysDir: string = keysDirOf(home),
): MasterKey[] {
  const keys: MasterKey[] = [];
  const fromEnv = env.COATCHECK_MASTER_KEY;
  if (fromEnv !== undefined && fromEnv !== '') keys.push(MasterKey.fromBase64(fromEnv));
  else {
    if (existsSync(home.masterKeyFile))
      keys.push(MasterKey.fromBase64(readKeyFile(home.masterKeyFile, 'master key file')));
    const next = join(home.dir, MASTER_KEY_NEXT_FILE);
    if (existsSync(next)) keys.push(MasterKey.fromBase64(readKeyFile(next, 'master key file')));
  }
  for (const file of keyFilesIn(keysDir))
    keys.push(MasterKey.fromBase64(readKeyFile(file, 'master key file')));
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

function keyFilesIn(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => name.endsWith('.key'))
    .sort()
    .map((name) => join(dir, name));
}

export function masterKeyFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.COATCHECK_MASTER_KEY !== undefined && env.COATCHECK_MASTER_KEY !== '';
}

/**
 * Add a master key to the keys directory as `<kid>.key` (0600), create-exclusive: an
 * existing file is never replaced. The same key already there is fine (a resumed
 * rotation); returns the file's path.
 */
export function writeMasterKeyFile(keysDir: string, key: MasterKey): string {
  mkdirSync(keysDir, { recursive: true, mode: 0o700 });
  const file = join(keysDir, `${key.kid}.key`);
  if (!writeFileExclusive(file, `${key.toBase64()}\n`, 0o600)) {
    const existing = MasterKey.fromBase64(readKeyFile(file, 'master key file'));
    if (existing.kid !== key.kid) {
      throw new CoatcheckError('CC_ERR_MASTER_KEY_INVALID', `${file} holds another key than its name says`, {
        details: { file },
      });
    }
  }
  return file;
}

/** The key files of a home that exist now (any of them means the home holds key material). */
export function existingKeyFiles(home: Home): string[] {
  return [
    home.masterKeyFile,
    join(home.dir, MASTER_KEY_NEXT_FILE),
    home.adminKeyFile,
    ...keyFilesIn(keysDirOf(home)),
  ].filter((f) => existsSync(f));
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
