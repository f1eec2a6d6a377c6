import { chmodSync, constants, copyFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import type { AuditAnchor, AuditVerifyResult } from '../audit/audit-log.js';
import type { Home } from '../config/home.js';
import { writeFileExclusive } from '../config/home.js';
import { loadConfigFile } from '../config/load-config.js';
import { CoatcheckError } from '../core/errors.js';
import { type Context, openContext, sqlitePath } from '../server/context.js';

/** Written beside every backup: what opens it and how far its audit log must reach. */
export interface BackupAnchor extends AuditAnchor {
  readonly format: 'coatcheck-backup-1';
  readonly createdAt: string;
  /** Id of the master key the copy is sealed under (the key itself is never written). */
  readonly masterKey: string;
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
  const anchor: BackupAnchor = {
    format: 'coatcheck-backup-1',
    createdAt: new Date(ctx.clock.now()).toISOString(),
    masterKey: ctx.keys.master.kid,
    seq: auditHead?.seq ?? 0,
    hash: auditHead?.hash ?? '',
  };
  if (!writeFileExclusive(anchorFile, `${JSON.stringify(anchor, null, 2)}\n`, 0o600)) {
    rmSync(path, { force: true });
    throw invalid(`${anchorFile} appeared while the backup ran`);
  }
  return { ...anchor, path, anchorFile };
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
  const config = loadConfigFile(home.configFile, env);
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
