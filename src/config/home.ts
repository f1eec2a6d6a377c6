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
  /**
   * True when the config file comes from COATCHECK_CONFIG (a file outside the home, often
   * read-only: a mounted ConfigMap). `init` then reads it and never writes one; a home is
   * complete when its store is initialized.
   */
  readonly configExternal: boolean;
  readonly masterKeyFile: string;
  readonly adminKeyFile: string;
  readonly serverFile: string;
}

export function resolveHome(dir?: string, env: NodeJS.ProcessEnv = process.env): Home {
  const chosen =
    dir ??
    (env.COATCHECK_HOME !== undefined && env.COATCHECK_HOME !== '' ? env.COATCHECK_HOME : './.coatcheck');
  const abs = isAbsolute(chosen) ? chosen : resolve(chosen);
  const external =
    env.COATCHECK_CONFIG !== undefined && env.COATCHECK_CONFIG !== '' ? env.COATCHECK_CONFIG : null;
  return {
    dir: abs,
    configFile: external === null ? join(abs, CONFIG_FILE) : resolve(external),
    configExternal: external !== null,
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

/** Key files are a line of base64; anything much larger is not one (and is not read whole). */
const MAX_KEY_FILE_BYTES = 4096;

function readKeyFile(path: string, what: string): string {
  const stat = statSync(path);
  if (!stat.isFile() || stat.size > MAX_KEY_FILE_BYTES) {
    throw new CoatcheckError('CC_ERR_MASTER_KEY_INVALID', `${what} ${path} is not a key file`, {
      details: { file: path },
    });
  }
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
  const fromEnv = envMasterKey(env);
  if (fromEnv !== null) keys.push(fromEnv);
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

const set = (value: string | undefined): value is string => value !== undefined && value !== '';

/** Whether the first master key comes from the environment (COATCHECK_MASTER_KEY or COATCHECK_MASTER_KEY_FILE), not the home. */
export function masterKeyFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return set(env.COATCHECK_MASTER_KEY) || set(env.COATCHECK_MASTER_KEY_FILE);
}

/**
 * The first master key as the environment gives it: COATCHECK_MASTER_KEY (base64), or
 * COATCHECK_MASTER_KEY_FILE, a file outside the home holding it (a mounted secret; the
 * same rule as `master.key`: readable by its owner only). Null when neither is set; both
 * set is refused rather than guessed between.
 */
export function envMasterKey(env: NodeJS.ProcessEnv = process.env): MasterKey | null {
  const value = env.COATCHECK_MASTER_KEY;
  const file = env.COATCHECK_MASTER_KEY_FILE;
  if (set(value) && set(file)) {
    throw new CoatcheckError(
      'CC_ERR_MASTER_KEY_INVALID',
      'COATCHECK_MASTER_KEY and COATCHECK_MASTER_KEY_FILE are both set; set one',
    );
  }
  if (set(value)) return MasterKey.fromBase64(value);
  if (!set(file)) return null;
  if (!existsSync(file)) {
    throw new CoatcheckError(
      'CC_ERR_MASTER_KEY_MISSING',
      `COATCHECK_MASTER_KEY_FILE names ${file}, which does not exist`,
      {
        details: { file },
      },
    );
  }
  return MasterKey.fromBase64(readKeyFile(file, 'master key file'));
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

const ADMIN_KEY_RE = /^cck_[A-Za-z0-9_-]{43,128}$/;

/**
 * The admin key `init` records, when the environment gives it (COATCHECK_ADMIN_KEY, for
 * example from a Kubernetes Secret): `cck_` and at least 43 base64url characters (256
 * bits). No admin.key file is written then. Null when unset.
 */
export function envAdminKey(env: NodeJS.ProcessEnv = process.env): string | null {
  const value = env.COATCHECK_ADMIN_KEY;
  if (!set(value)) return null;
  const trimmed = value.trim();
  if (!ADMIN_KEY_RE.test(trimmed)) {
    throw new CoatcheckError(
      'CC_ERR_CONFIG_INVALID',
      'COATCHECK_ADMIN_KEY must be cck_ and 43 to 128 base64url characters (32 random bytes or more)',
      { details: { file: 'COATCHECK_ADMIN_KEY', line: null, field: 'COATCHECK_ADMIN_KEY' } },
    );
  }
  return trimmed;
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
