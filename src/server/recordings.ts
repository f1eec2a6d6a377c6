import { isAbsolute, join } from 'node:path';
import type { Config } from '../config/schema.js';
import { CoatcheckError } from '../core/errors.js';
import type { RecordingArchive } from '../recording/archive.js';
import { SessionRecordings } from '../recording/recordings.js';
import { fileRecordingStorage, type RecordingStorage, routedRecordingStorage } from '../recording/storage.js';
import { accessKeyFromEnv, parseAccessKey, s3RecordingStorage } from '../recording/storage-s3.js';
import type { Context } from './context.js';

/** The recordings directory of a home (recording.dir, relative to the home unless absolute). */
export function recordingsDir(ctx: Pick<Context, 'home' | 'config'>): string {
  const dir = ctx.config.recording.dir;
  return isAbsolute(dir) ? dir : join(ctx.home.dir, dir);
}

type S3Config = Extract<Config['recording']['storage'], { kind: 's3' }>;

/** The object store `recording.storage` names, its access key from the vault or the environment. */
function s3Storage(ctx: Pick<Context, 'vault' | 'store'>, c: S3Config): RecordingStorage {
  const credentials = c.credentials;
  return s3RecordingStorage(
    {
      endpoint: c.endpoint,
      bucket: c.bucket,
      region: c.region,
      prefix: c.prefix,
      forcePathStyle: c.forcePathStyle,
      timeoutMs: c.timeoutMs,
    },
    async () => {
      if ('env' in credentials) return accessKeyFromEnv(process.env);
      // This one secret, by name (not the whole vault decrypted to find it).
      const record = await ctx.store.getSecretByName(credentials.secret);
      const secret = record === null ? null : await ctx.vault.knownSecret(record.id);
      if (secret === null) {
        throw new CoatcheckError(
          'CC_ERR_RECORDING_STORAGE',
          `recording.storage names vault secret ${credentials.secret}, which does not exist`,
          { details: { operation: 'credentials' } },
        );
      }
      return parseAccessKey(credentials.secret, secret.value.reveal());
    },
  );
}

/**
 * Where this home's sealed recordings are kept: new ones where `recording.storage` says
 * (files under the home, ADR 0018, or an S3-compatible store, ADR 0024); each stored one
 * is read from where its location says it was written.
 */
export function recordingStorage(
  ctx: Pick<Context, 'home' | 'config' | 'vault' | 'store'>,
): RecordingStorage {
  const c = ctx.config.recording.storage;
  const files = () => fileRecordingStorage(recordingsDir(ctx));
  const s3 = c.kind === 's3' ? () => s3Storage(ctx, c) : undefined;
  return routedRecordingStorage(c.kind === 's3' ? s3!() : files(), {
    file: files,
    ...(s3 === undefined ? {} : { s3 }),
  });
}

/** Session recordings for this process's driver, from the config's `recording` section. */
export function sessionRecordings(ctx: Context): SessionRecordings {
  const c = ctx.config.recording;
  return new SessionRecordings({
    store: ctx.store,
    audit: ctx.audit,
    storage: recordingStorage(ctx),
    wrapKey: ctx.keys.index.recording,
    // The shared index (ADR 0021): a change is applied secret by secret, never a rebuild of the whole set.
    knownMatcher: async () => {
      // Loaded when the first recording is written (CLI commands that read recordings never pay for it).
      const { currentSecretMatcher, sharedKnownSecretIndex } = await import(
        '../gateway/known-secret-index.js'
      );
      return currentSecretMatcher(sharedKnownSecretIndex(ctx.vault, ctx.store));
    },
    log: ctx.log,
    registry: ctx.metrics,
    clock: ctx.clock,
    settings: {
      default: c.default,
      limits: {
        maxSessionBytes: c.maxSessionBytes,
        maxBodyBytes: c.maxBodyBytes,
        maxRowsPerStatement: c.maxRowsPerStatement,
      },
      maxQueued: c.maxQueued,
      whenFull: c.whenFull,
    },
  });
}

/** Reading this home's recordings (replay, export, verify, retention): store rows, sealed files, the recording key. */
export function recordingArchive(ctx: Context): RecordingArchive {
  return {
    store: ctx.store,
    storage: recordingStorage(ctx),
    wrapKey: ctx.keys.index.recording,
    // A sealed recording is at most its compressed events plus chunk overhead.
    maxFileBytes: Math.min(2 * ctx.config.recording.maxSessionBytes + 16 * 1024 * 1024, 2 ** 31 - 1),
  };
}
