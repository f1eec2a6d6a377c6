import { chmodSync, constants, copyFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import Database from 'better-sqlite3';
import type { AuditAnchor, AuditVerifyResult } from '../audit/audit-log.js';
import type { Home } from '../config/home.js';
import { keysDirOf, loadMasterKeys, writeFileExclusive } from '../config/home.js';
import { loadConfigFile } from '../config/load-config.js';
import { CoatcheckError } from '../core/errors.js';
import { type Context, openContext, sqlitePath } from '../server/context.js';
import { sqliteAddon } from '../store/sqlite-store.js';

/** Written beside every backup: what opens it and how far its audit log must reach. */
export interface BackupAnchor extends AuditAnchor {
  readonly format: 'coatcheck-backup-1';
  readonly createdAt: string;
  /** Id of the master key the copy seals new data under (the key itself is never written). */
  readonly masterKey: string;
  /** Ids of every master key the copy's sealed data depends on (a copy taken mid-rotation needs two). */
  readonly keyIds: readonly string[];
}

export function anchorPathFor(backupPath: string): string {
  return `${backupPath}.anchor.json`;
}

function invalid(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_BACKUP_INVALID', message);
}

/**
 * A consistent copy of a SQLite store while it serves (the store's own connection writes
 * one snapshot, WAL included), plus an anchor file holding the audit head of that copy
 * and the id of the master key it needs. Never overwrites a file.
 */
export async function backupStore(
  ctx: Pick<Context, 'store' | 'audit' | 'keys' | 'clock'>,
  path: string,
): Promise<BackupAnchor & { path: string; anchorFile: string }> {
  if (!isAbsolute(path)) throw invalid('the backup path must be absolute');
  const anchorFile = anchorPathFor(path);
  if (existsSync(path) || existsSync(anchorFile))
    throw invalid(`${path} (or its anchor file) exists; a backup never overwrites a file`);
  await ctx.audit.flush();
  const { auditHead } = await ctx.store.backupTo(path);
  const needs = keyIdsOfCopy(path);
  const anchor: BackupAnchor = {
    format: 'coatcheck-backup-1',
    createdAt: new Date(ctx.clock.now()).toISOString(),
    masterKey: needs.active,
    keyIds: needs.keyIds,
    seq: auditHead?.seq ?? 0,
    hash: auditHead?.hash ?? '',
  };
  if (!writeFileExclusive(anchorFile, `${JSON.stringify(anchor, null, 2)}\n`, 0o600)) {
    rmSync(path, { force: true });
    throw invalid(`${anchorFile} appeared while the backup ran`);
  }
  return { ...anchor, path, anchorFile };
}

/**
 * The master key ids a SQLite copy depends on, read from the copy itself (read-only): the
 * key sealing its index key, its proxy CA key, and each live data key.
 */
export function keyIdsOfCopy(path: string): { active: string; keyIds: string[] } {
  let db: Database.Database;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true, ...sqliteAddon() });
  } catch {
    throw invalid(`${path} is not a readable SQLite store`);
  }
  try {
    const meta = new Map(
      (
        db
          .prepare("SELECT key, value FROM meta WHERE key IN ('master_kid', 'proxy_ca_key_kid', 'keyring')")
          .all() as { key: string; value: string }[]
      ).map((r) => [r.key, r.value]),
    );
    const kids = new Set<string>();
    for (const key of ['master_kid', 'proxy_ca_key_kid']) {
      const kid = meta.get(key);
      if (kid !== undefined) kids.add(kid);
    }
    for (const row of db
      .prepare('SELECT DISTINCT key_id FROM secrets WHERE wrapped_key IS NOT NULL AND key_id IS NOT NULL')
      .all() as { key_id: string }[])
      kids.add(row.key_id);
    let active = meta.get('master_kid') ?? '';
    const keyring = meta.get('keyring');
    if (keyring !== undefined) {
      try {
        const parsed = JSON.parse(keyring) as { active?: unknown; previous?: unknown };
        if (typeof parsed.active === 'string') active = parsed.active;
        // Mid-rotation both keys are in use: the active one seals, the previous one is still being rewrapped away from.
        if (typeof parsed.active === 'string') kids.add(parsed.active);
      } catch {
        throw invalid(`${path} holds an unreadable keyring state`);
      }
    }
    return { active, keyIds: [...kids].sort() };
  } catch (error) {
    if (error instanceof CoatcheckError) throw error;
    throw invalid(`${path} is not a coatcheck store`);
  } finally {
    db.close();
  }
}

export function readAnchor(file: string): AuditAnchor {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    throw invalid(`${file} is not a readable anchor file (JSON with seq and hash)`);
  }
  const a = parsed as Partial<AuditAnchor>;
  if (typeof a.seq !== 'number' || !Number.isInteger(a.seq) || a.seq < 0 || typeof a.hash !== 'string')
    throw invalid(`${file} is not an anchor file (it needs an integer seq and a hash)`);
  return { seq: a.seq, hash: a.hash };
}

/**
 * Restore a backup into a home whose store file is missing: copy it in (never over an
 * existing store), open it with the home's master key, and verify its audit chain against
 * the backup's anchor. On any failure the copied file is removed again.
 */
export async function restoreStore(
  home: Home,
  backupPath: string,
  env: NodeJS.ProcessEnv,
): Promise<{ store: string; verify: AuditVerifyResult; anchored: boolean }> {
  if (!existsSync(backupPath)) throw invalid(`${backupPath} does not exist`);
  const config = await loadConfigFile(home.configFile, env);
  if (config.store.driver !== 'sqlite')
    throw new CoatcheckError(
      'CC_ERR_BACKUP_UNSUPPORTED',
      'this home uses a PostgreSQL store: restore it with the database tools, then run `coatcheck audit verify --anchor`',
    );
  const target = sqlitePath(home, config);
  if (existsSync(target))
    throw invalid(`${target} exists; restore never overwrites a store (move it away deliberately first)`);
  const anchorFile = anchorPathFor(backupPath);
  const anchor = existsSync(anchorFile) ? readAnchor(anchorFile) : undefined;
  // Every key the backup depends on must be in this home's keyring (retired keys are kept
  // in the keys directory for this): refuse by kid before copying anything.
  const held = new Set(loadMasterKeys(home, env, keysDirOf(home, config.keys.dir)).map((k) => k.kid));
  const missing = keyIdsOfCopy(backupPath).keyIds.filter((kid) => !held.has(kid));
  if (missing.length > 0)
    throw new CoatcheckError(
      'CC_ERR_MASTER_KEY_UNAVAILABLE',
      `the backup needs master key ${missing.join(', ')}, which this home's keyring does not hold; copy ${missing.map((k) => `${k}.key`).join(', ')} into ${keysDirOf(home, config.keys.dir)}`,
      { details: { keyId: missing[0], keyIds: missing } },
    );
  copyFileSync(backupPath, target, constants.COPYFILE_EXCL);
  chmodSync(target, 0o600);
  try {
    const ctx = await openContext(home, { env });
    try {
      const verify = await ctx.audit.verify(anchor === undefined ? {} : { anchor });
      if (!verify.ok) throw invalid(`the restored audit log does not verify: ${verify.message}`);
      return { store: target, verify, anchored: anchor !== undefined };
    } finally {
      await ctx.close();
    }
  } catch (error) {
    rmSync(target, { force: true });
    rmSync(`${target}-wal`, { force: true });
    rmSync(`${target}-shm`, { force: true });
    throw error;
  }
}
