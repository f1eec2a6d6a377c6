import { writeFile } from 'node:fs';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CoatcheckError } from '../core/errors.js';

/**
 * Where sealed recordings live. The embedded default keeps one file per recording under
 * the home (0600, directory 0700); `storage-s3.ts` keeps one object per recording in an
 * S3-compatible store (ADR 0024). Everything stored here is already sealed: the storage
 * never sees a key or plaintext.
 */
export interface RecordingStorage {
  readonly kind: string;
  /** The location a new recording of `sessionId` is stored at (kept in its row). */
  locate(sessionId: string): string;
  /** Store a new object; never overwrites one that exists. */
  put(location: string, data: Buffer): Promise<void>;
  /** The object, or null when it is gone. Refuses objects larger than `maxBytes`. */
  get(location: string, maxBytes: number): Promise<Buffer | null>;
  delete(location: string): Promise<void>;
}

/**
 * A file location is `<session id>.ccr`, or `<session id>.p<n>.ccr` for the n-th part of a
 * recording written while its session ran: no separators, nothing that could leave the directory.
 */
const LOCATION = /^ses_[0-9A-Za-z]{1,64}(?:\.p[0-9]{1,7})?\.ccr$/;

/** The location of part `n` of the recording whose last part is at `location`. */
export function partLocation(location: string, n: number): string {
  if (!location.endsWith('.ccr') || /\.p[0-9]+\.ccr$/.test(location)) {
    throw new CoatcheckError(
      'CC_ERR_RECORDING_UNREADABLE',
      'a recording location is not a recording file name',
    );
  }
  return `${location.slice(0, -'.ccr'.length)}.p${n}.ccr`;
}

export function locationFor(sessionId: string): string {
  const location = `${sessionId}.ccr`;
  checkLocation(location);
  return location;
}

export function checkLocation(location: string): void {
  if (!LOCATION.test(location)) {
    throw new CoatcheckError(
      'CC_ERR_RECORDING_UNREADABLE',
      'a recording location is not a recording file name',
    );
  }
}

const writeNew = promisify(writeFile);

export function fileRecordingStorage(dir: string): RecordingStorage {
  let ready: Promise<void> | null = null;
  const ensure = () => {
    ready ??= mkdir(dir, { recursive: true, mode: 0o700 }).then(() => undefined);
    return ready;
  };
  return {
    kind: 'file',
    locate: locationFor,
    async put(location, data) {
      checkLocation(location);
      await ensure();
      // 'wx': a new file only; 0600: readable by the gateway's user alone. Not synced one by
      // one (a sync per request would cost more than the request): a crash can lose the last
      // recordings written, and `audit verify` then names each as removed.
      // The callback form: the promise form makes a FileHandle per file, which cost more
      // than the write itself for the small files most recordings are.
      await writeNew(join(dir, location), data, { flag: 'wx', mode: 0o600 });
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

/**
 * Storage that writes new recordings to `writer` and reads each stored one from the
 * storage its location names: a location `s3:<name>` is in the object store, a bare
 * `<name>` a file under the home. Switching `recording.storage` leaves the recordings
 * already written readable where they are.
 */
export function routedRecordingStorage(
  writer: RecordingStorage,
  byKind: Readonly<Record<string, () => RecordingStorage>>,
): RecordingStorage {
  const cache = new Map<string, RecordingStorage>([[writer.kind, writer]]);
  const of = (location: string): { storage: RecordingStorage; location: string } => {
    const colon = location.indexOf(':');
    const kind = colon < 0 ? 'file' : location.slice(0, colon);
    let storage = cache.get(kind);
    if (storage === undefined) {
      const make = byKind[kind];
      if (make === undefined) {
        throw new CoatcheckError(
          'CC_ERR_RECORDING_UNREADABLE',
          `a recording is stored in ${kind === 's3' ? 'an S3-compatible store' : 'an unknown storage'} that recording.storage no longer names`,
        );
      }
      storage = make();
      cache.set(kind, storage);
    }
    return { storage, location };
  };
  return {
    kind: writer.kind,
    locate: (sessionId) => writer.locate(sessionId),
    put: (location, data) => of(location).storage.put(location, data),
    get: (location, maxBytes) => of(location).storage.get(location, maxBytes),
    delete: (location) => of(location).storage.delete(location),
  };
}
