import { isAbsolute, join } from 'node:path';
import type { RecordingArchive } from '../recording/archive.js';
import { SessionRecordings } from '../recording/recordings.js';
import { fileRecordingStorage, type RecordingStorage } from '../recording/storage.js';
import type { Context } from './context.js';

/** The recordings directory of a home (recording.dir, relative to the home unless absolute). */
export function recordingsDir(ctx: Pick<Context, 'home' | 'config'>): string {
  const dir = ctx.config.recording.dir;
  return isAbsolute(dir) ? dir : join(ctx.home.dir, dir);
}

/** Where this home's sealed recordings are kept (files under the home; ADR 0018). */
export function recordingStorage(ctx: Pick<Context, 'home' | 'config'>): RecordingStorage {
  return fileRecordingStorage(recordingsDir(ctx));
}

/** Session recordings for this process's driver, from the config's `recording` section. */
export function sessionRecordings(ctx: Context): SessionRecordings {
  const c = ctx.config.recording;
  return new SessionRecordings({
    store: ctx.store,
    audit: ctx.audit,
    storage: recordingStorage(ctx),
    wrapKey: ctx.keys.index.recording,
    knownSecrets: () => ctx.vault.knownSecrets(),
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
