import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CoatcheckError } from '../core/errors.js';

/**
 * Where sealed recordings live. The embedded default keeps one file per recording under
 * the home (0600, directory 0700). An S3-compatible object store would be another
 * implementation of this interface (ADR 0018 says why there is none yet). Everything
 * stored here is already sealed: the storage never sees a key or plaintext.
 */
export interface RecordingStorage {
  readonly kind: string;
  /** Store a new object; never overwrites one that exists. */
  put(location: string, data: Buffer): Promise<void>;
  /** The object, or null when it is gone. Refuses objects larger than `maxBytes`. */
  get(location: string, maxBytes: number): Promise<Buffer | null>;
  delete(location: string): Promise<void>;
}

/** A location is `<session id>.ccr`: no separators, nothing that could leave the directory. */
const LOCATION = /^ses_[0-9A-Za-z]{1,64}\.ccr$/;

export function locationFor(sessionId: string): string {
  const location = `${sessionId}.ccr`;
  checkLocation(location);
  return location;
}

function checkLocation(location: string): void {
  if (!LOCATION.test(location)) {
    throw new CoatcheckError(
      'CC_ERR_RECORDING_UNREADABLE',
      'a recording location is not a recording file name',
    );
  }
}

export function fileRecordingStorage(dir: string): RecordingStorage {
  let ready: Promise<void> | null = null;
  const ensure = () => {
    ready ??= mkdir(dir, { recursive: true, mode: 0o700 }).then(() => undefined);
    return ready;
  };
  return {
    kind: 'file',
    async put(location, data) {
      checkLocation(location);
      await ensure();
      // 'wx': a new file only; 0600: readable by the gateway's user alone. Not synced one by
      // one (a sync per request would cost more than the request): a crash can lose the last
      // recordings written, and `audit verify` then names each as removed.
      await writeFile(join(dir, location), data, { flag: 'wx', mode: 0o600 });
    },
    async get(location, maxBytes) {
      checkLocation(location);
      const path = join(dir, location);
      try {
        const info = await stat(path);
        if (info.size > maxBytes) {
          throw new CoatcheckError(
            'CC_ERR_RECORDING_UNREADABLE',
            `recording file ${location} is larger than allowed`,
          );
        }
        return await readFile(path);
      } catch (error) {
        if ((error as { code?: string }).code === 'ENOENT') return null;
        throw error;
      }
    },
    async delete(location) {
      checkLocation(location);
      await rm(join(dir, location), { force: true });
    },
  };
}
