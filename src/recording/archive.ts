import { createHash } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import type { AuditRecord, RecordingRecord, Store } from '../store/types.js';
import { open as openSealed } from '../vault/envelope.js';
import {
  chunkAad,
  dataKeyAad,
  hashFile,
  joinParts,
  openRecording,
  PART_CHUNKS,
  splitChunks,
} from './format.js';
import type { RecordingEvent } from './model.js';
import { partLocation, type RecordingStorage } from './storage.js';

/** What reading recordings needs: the store rows, the sealed files, the keyring's recording key. */
export interface RecordingArchive {
  readonly store: Store;
  readonly storage: RecordingStorage;
  readonly wrapKey: Buffer;
  /** Largest recording file read (bytes). */
  readonly maxFileBytes: number;
}

function notFound(id: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_NOT_FOUND', `no full recording of session ${id}`, { details: { id } });
}

/**
 * A recording's sealed file. A recording written while its session ran is in parts: its
 * last part at the row's location, and before it parts of exactly PART_CHUNKS chunks each
 * (as many as the row's chunk count leaves); they are joined into the one file the same
 * recording sealed at once would be. Null when any part is gone. Every part and the whole
 * are bounded by `maxFileBytes`; the chained hash then vouches for what was joined.
 */
export async function recordingFile(
  archive: RecordingArchive,
  record: RecordingRecord,
): Promise<Buffer | null> {
  const last = await archive.storage.get(record.location, archive.maxFileBytes);
  if (last === null) return null;
  const earlier = record.chunks - splitChunks(record.id, last).length;
  if (earlier === 0) return last;
  if (earlier < 0 || earlier % PART_CHUNKS !== 0) {
    throw new CoatcheckError(
      'CC_ERR_RECORDING_UNREADABLE',
      `recording ${record.id}: its parts do not hold the chunks its row counts`,
      { details: { session: record.id } },
    );
  }
  const parts: Buffer[] = [];
  let total = last.length;
  for (let n = 0; n < earlier / PART_CHUNKS; n++) {
    const part = await archive.storage.get(partLocation(record.location, n), archive.maxFileBytes);
    if (part === null) return null;
    total += part.length;
    if (total > archive.maxFileBytes) {
      throw new CoatcheckError(
        'CC_ERR_RECORDING_UNREADABLE',
        `recording ${record.id} is larger than allowed`,
        {
          details: { session: record.id },
        },
      );
    }
    parts.push(part);
  }
  parts.push(last);
  return joinParts(record.id, parts);
}

async function fileOf(archive: RecordingArchive, record: RecordingRecord): Promise<Buffer> {
  const file = await recordingFile(archive, record);
  if (file === null) {
    throw new CoatcheckError('CC_ERR_RECORDING_UNREADABLE', `recording ${record.id}: its file is gone`, {
      details: { session: record.id },
    });
  }
  return file;
}

/** A recording's row and events, verified against its chained hash and decrypted. */
export async function loadRecording(
  archive: RecordingArchive,
  id: string,
): Promise<{ record: RecordingRecord; events: RecordingEvent[] }> {
  const record = await archive.store.getRecording(id);
  if (record === null) throw notFound(id);
  const file = await fileOf(archive, record);
  const events = await openRecording(id, file, record.hash, record.wrappedKey, archive.wrapKey);
  return { record, events };
}

/** The events' canonical bytes (NDJSON, one JSON line per event) and their SHA-256, as an export carries them. */
export function eventsDigest(events: readonly RecordingEvent[]): string {
  const hash = createHash('sha256');
  for (const event of events) hash.update(`${JSON.stringify(event)}\n`);
  return hash.digest('hex');
}

export const EXPORT_FORMAT = 'coatcheck-recording-export/1';

/**
 * A self-contained bundle: the events, the sealed file, the recording's data key (it opens
 * this recording only, whose plaintext the bundle carries anyway), and the audit records
 * that vouch for it (`recording.sealed` holds the chained hash). `verifyExport` checks it
 * without the gateway; docs/recording.md says how to check the audit record against the
 * live log.
 */
export interface RecordingExport {
  readonly format: typeof EXPORT_FORMAT;
  readonly session: Readonly<Record<string, unknown>>;
  readonly recording: {
    readonly id: string;
    readonly hash: string;
    readonly chunks: number;
    readonly bytes: number;
    readonly sealed: string;
    readonly dataKey: string;
  };
  readonly events: readonly RecordingEvent[];
  readonly eventsSha256: string;
  readonly audit: readonly AuditRecord[];
  readonly verify: string;
}

/** Audit records that name the session (its recording.sealed first), by reading the log (bounded). */
async function auditFor(store: Store, id: string, limit = 200): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  let after = 0;
  for (;;) {
    const page = await store.readAudit(after, 1000);
    if (page.length === 0) break;
    for (const record of page) {
      if ((record.data as { session?: unknown }).session === id && out.length < limit) out.push(record);
    }
    after = page[page.length - 1]!.seq;
  }
  return out;
}

export async function exportRecording(archive: RecordingArchive, id: string): Promise<RecordingExport> {
  const { record, events } = await loadRecording(archive, id);
  const file = await fileOf(archive, record);
  const dataKey = openSealed(archive.wrapKey, record.wrappedKey!, dataKeyAad(id));
  if (dataKey === null) throw notFound(id);
  const session = await archive.store.getSession(id);
  const audit = await auditFor(archive.store, id);
  return {
    format: EXPORT_FORMAT,
    session: {
      id,
      frontend: record.frontend,
      principal: record.principal,
      connection: record.connection,
      startedAt: record.startedAt,
      endedAt: record.endedAt,
      outcome: session?.outcome ?? null,
    },
    recording: {
      id,
      hash: record.hash,
      chunks: record.chunks,
      bytes: record.bytes,
      sealed: file.toString('base64'),
      dataKey: dataKey.toString('base64'),
    },
    events,
    eventsSha256: eventsDigest(events),
    audit,
    verify: `coatcheck sessions verify-export <file>; then compare audit record ${
      audit.find((a) => a.type === 'recording.sealed')?.seq ?? '?'
    } with \`coatcheck audit export\` and run \`coatcheck audit verify\` on the gateway`,
  };
}

export interface ExportCheck {
  readonly ok: boolean;
  readonly problems: readonly string[];
  readonly sealedAuditSeq: number | null;
  readonly sealedAuditHash: string | null;
}

/**
 * Check a bundle without the gateway: the sealed chunks chain to the hash the
 * `recording.sealed` audit record names; they decrypt (with the bundled data key) to
 * exactly the bundled events; the events' digest matches.
 */
export async function verifyExport(bundle: RecordingExport): Promise<ExportCheck> {
  const problems: string[] = [];
  if (bundle.format !== EXPORT_FORMAT) problems.push('not a coatcheck recording export');
  const id = String(bundle.recording?.id ?? '');
  const sealedRecord = (bundle.audit ?? []).find(
    (a) => a.type === 'recording.sealed' && (a.data as { session?: unknown }).session === id,
  );
  if (sealedRecord === undefined) problems.push('no recording.sealed audit record for this session');
  let file: Buffer;
  try {
    file = Buffer.from(String(bundle.recording.sealed), 'base64');
    const { hash } = hashFile(id, file);
    if (hash !== bundle.recording.hash) problems.push('the sealed chunks do not chain to the recording hash');
    if (sealedRecord !== undefined && (sealedRecord.data as { hash?: unknown }).hash !== hash) {
      problems.push('the sealed chunks do not chain to the hash in the audit record');
    }
    const key = Buffer.from(String(bundle.recording.dataKey), 'base64');
    const plain: Buffer[] = [];
    const { inflateRawSync } = await import('node:zlib');
    splitChunks(id, file).forEach((chunk, i) => {
      const opened = openSealed(key, chunk, chunkAad(id, i));
      if (opened === null) throw new Error(`chunk ${i} does not authenticate`);
      plain.push(inflateRawSync(opened, { maxOutputLength: 1024 * 1024 }));
    });
    const text = Buffer.concat(plain).toString('utf8');
    const bundled = (bundle.events ?? []).map((e) => `${JSON.stringify(e)}\n`).join('');
    if (text !== bundled) problems.push('the events differ from the sealed recording');
    if (eventsDigest(bundle.events ?? []) !== bundle.eventsSha256) problems.push('the events digest differs');
  } catch (error) {
    problems.push(
      error instanceof Error ? error.message.slice(0, 200) : 'the sealed recording is unreadable',
    );
  }
  return {
    ok: problems.length === 0,
    problems,
    sealedAuditSeq: sealedRecord?.seq ?? null,
    sealedAuditHash: sealedRecord?.hash ?? null,
  };
}

export interface RecordingProblem {
  readonly session: string;
  readonly problem: 'removed' | 'edited' | 'unvouched' | 'unreadable';
  readonly message: string;
}

/**
 * Check every recording the audit log vouches for: its row and file still exist (unless its
 * erasure is audited) and the file's chained hash is the one in `recording.sealed`. Rows
 * without such a record are reported as unvouched.
 */
export async function verifyRecordings(
  archive: RecordingArchive,
): Promise<{ checked: number; problems: RecordingProblem[] }> {
  const sealed = new Map<string, string>();
  const erased = new Set<string>();
  let after = 0;
  for (;;) {
    const page = await archive.store.readAudit(after, 1000);
    if (page.length === 0) break;
    for (const record of page) {
      const data = record.data as { session?: unknown; hash?: unknown };
      if (record.type === 'recording.sealed' && typeof data.session === 'string')
        sealed.set(data.session, String(data.hash));
      if (record.type === 'recording.erased' && typeof data.session === 'string') erased.add(data.session);
    }
    after = page[page.length - 1]!.seq;
  }
  const problems: RecordingProblem[] = [];
  for (const [id, hash] of sealed) {
    if (erased.has(id)) continue;
    const row = await archive.store.getRecording(id);
    if (row === null) {
      problems.push({ session: id, problem: 'removed', message: `recording ${id}: its row is gone` });
      continue;
    }
    if (row.hash !== hash) {
      problems.push({
        session: id,
        problem: 'edited',
        message: `recording ${id}: its row names another hash`,
      });
      continue;
    }
    let file: Buffer | null;
    try {
      file = await recordingFile(archive, row);
    } catch (error) {
      problems.push({
        session: id,
        problem: 'unreadable',
        message: `recording ${id}: ${error instanceof CoatcheckError ? error.message.replace(/^recording \S+: /, '') : 'its file cannot be read'}`,
      });
      continue;
    }
    if (file === null) {
      problems.push({ session: id, problem: 'removed', message: `recording ${id}: its file is gone` });
      continue;
    }
    try {
      if (hashFile(id, file).hash !== hash) {
        problems.push({ session: id, problem: 'edited', message: `recording ${id}: its file was changed` });
      }
    } catch {
      problems.push({
        session: id,
        problem: 'unreadable',
        message: `recording ${id}: its file is not a recording`,
      });
    }
  }
  // Rows the log does not vouch for (a forged row, or one whose audit record is missing).
  let before: number | undefined;
  for (;;) {
    const rows = await archive.store.listRecordings({
      limit: 1000,
      ...(before === undefined ? {} : { until: before }),
    });
    for (const row of rows) {
      if (!sealed.has(row.id)) {
        problems.push({
          session: row.id,
          problem: 'unvouched',
          message: `recording ${row.id}: no audit record vouches for it`,
        });
      }
    }
    if (rows.length < 1000) break;
    before = rows[rows.length - 1]!.startedAt;
  }
  return { checked: sealed.size, problems };
}

/**
 * Retention: erase recordings older than `maxAgeMs`, then the oldest while all stored bytes
 * exceed `maxBytes`. Erasing destroys the data key (the row's wrapped key), removes the file
 * and writes `recording.erased` to the audit log.
 */
export async function applyRetention(
  archive: RecordingArchive,
  audit: Pick<AuditLog, 'append'>,
  clock: Clock,
  limits: { maxAgeMs: number; maxBytes: number },
  actor: string,
): Promise<{ erased: string[]; sessionsPruned: number }> {
  const now = clock.now();
  const live = await archive.store.listRecordings({ live: true, order: 'oldest', limit: 100_000 });
  let total = live.reduce((sum, r) => sum + r.bytes, 0);
  const erased: string[] = [];
  for (const row of live) {
    const old = now - row.startedAt > limits.maxAgeMs;
    if (!old && total <= limits.maxBytes) break;
    await eraseRecording(archive, audit, clock, row.id, old ? 'retention-age' : 'retention-size', actor);
    total -= row.bytes;
    erased.push(row.id);
  }
  return { erased, sessionsPruned: await pruneSessions(archive.store, audit, now - limits.maxAgeMs, actor) };
}

/** Session rows deleted per transaction (and audit record): on SQLite each one holds the event loop for a few ms. */
const PRUNE_BATCH = 5000;

/**
 * Delete the session rows (every request's and session's metadata) that started before
 * `before`: the store grew by one per request and nothing removed them. Each batch of up to
 * PRUNE_BATCH rows is one transaction with its `sessions.pruned` record (a failed audit
 * deletes nothing), and the event loop is free between batches, so a large backlog is
 * worked off without holding requests up. What the sessions did stays in the audit log,
 * which is never pruned.
 */
export async function pruneSessions(
  store: Pick<RecordingArchive['store'], 'listSessions'>,
  audit: Pick<AuditLog, 'append'>,
  before: number,
  actor: string,
  batch = PRUNE_BATCH,
): Promise<number> {
  let total = 0;
  for (;;) {
    // Anything (left) to do? The newest row before the cut: one indexed read.
    const [oldest] = await store.listSessions({ before, limit: 1 });
    if (oldest === undefined) return total;
    // The record is sealed after its mutation ran (src/audit/audit-log.ts): it carries the
    // count deleted in the same transaction (reset if the batch is retried).
    const data = { before, count: 0 };
    await audit.append({ type: 'sessions.pruned', actor, data }, async (tx) => {
      data.count = await tx.deleteSessionsBefore(before, batch);
      return undefined;
    });
    total += data.count;
    if (data.count < batch) return total;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** Erase one recording: audit first, then destroy its data key, then remove its file. */
export async function eraseRecording(
  archive: RecordingArchive,
  audit: Pick<AuditLog, 'append'>,
  clock: Clock,
  id: string,
  reason: 'retention-age' | 'retention-size' | 'operator',
  actor: string,
): Promise<boolean> {
  const row = await archive.store.getRecording(id);
  if (row === null || row.erasedAt !== null) return false;
  await audit.append({ type: 'recording.erased', actor, data: { session: id, reason } });
  await archive.store.eraseRecording(id, clock.now());
  await archive.storage.delete(row.location);
  // The parts written while the session ran: PART_CHUNKS chunks each, and the last part holds at least one.
  for (let n = 0; n < Math.floor((row.chunks - 1) / PART_CHUNKS); n++) {
    await archive.storage.delete(partLocation(row.location, n));
  }
  return true;
}
