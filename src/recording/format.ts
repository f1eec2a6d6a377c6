import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { deflateRaw, deflateRawSync, inflateRaw } from 'node:zlib';
import { CoatcheckError } from '../core/errors.js';
import { newDataKey, open, seal } from '../vault/envelope.js';
import type { RecordingEvent } from './model.js';

/**
 * The sealed recording format (ADR 0018). A file is
 *
 *   "CCREC1\n" | chunk* ,  chunk = u32 big-endian length | sealed bytes
 *
 * Each chunk is NDJSON events, deflate-compressed, then sealed (AES-256-GCM) under the
 * recording's own data key with associated data naming the session and the chunk's index,
 * so chunks cannot be moved between recordings or reordered. The recording's hash chains
 * the sealed chunks: h0 = SHA-256("coatcheck recording v1\0" + id), hi = SHA-256(h(i-1) |
 * SHA-256(chunk i)); the last one is written into the audit chain (`recording.sealed`), so
 * an edited, truncated, reordered or removed file no longer matches.
 */
export const MAGIC = Buffer.from('CCREC1\n', 'latin1');
/** Plain NDJSON per chunk before compression. */
export const CHUNK_PLAIN_BYTES = 256 * 1024;
/** Refuse to read a chunk claiming more than this (a damaged or hostile file). */
const MAX_SEALED_CHUNK = 2 * CHUNK_PLAIN_BYTES + 4096;
/** Refuse to inflate a chunk beyond this (a compression bomb in a forged file). */
const MAX_INFLATED_CHUNK = CHUNK_PLAIN_BYTES;

const deflate = promisify(deflateRaw);
const DEFLATE = { level: 3, memLevel: 6, windowBits: 14 } as const;
const SYNC_DEFLATE_BYTES = 16 * 1024;
const inflate = promisify(inflateRaw);

export function chunkAad(id: string, index: number): string {
  return `coatcheck recording ${id} chunk ${index}`;
}

export function dataKeyAad(id: string): string {
  return `coatcheck recording key ${id}`;
}

export function chainStart(id: string): Buffer {
  return createHash('sha256').update(`coatcheck recording v1\0${id}`).digest();
}

export function chainNext(previous: Buffer, sealed: Buffer): Buffer {
  const inner = createHash('sha256').update(sealed).digest();
  return createHash('sha256').update(previous).update(inner).digest();
}

export interface SealedRecording {
  readonly file: Buffer;
  readonly hash: string;
  readonly chunks: number;
  /** The data key wrapped under the recording key (store this; destroy it to erase). */
  readonly wrappedKey: Buffer;
}

/** The NDJSON stream of `lines`, cut into pieces of CHUNK_PLAIN_BYTES (a line may span pieces). */
function pieces(lines: readonly string[]): Buffer[] {
  const all = Buffer.from(lines.length === 0 ? '' : `${lines.join('\n')}\n`, 'utf8');
  const out: Buffer[] = [];
  for (let at = 0; at < all.length; at += CHUNK_PLAIN_BYTES)
    out.push(all.subarray(at, at + CHUNK_PLAIN_BYTES));
  return out;
}

/** Compress, seal and chain `events` under a new data key wrapped with `wrapKey`. */
export function sealRecording(
  id: string,
  events: readonly RecordingEvent[],
  wrapKey: Buffer,
): Promise<SealedRecording> {
  return sealLines(
    id,
    events.map((event) => JSON.stringify(event)),
    wrapKey,
  );
}

/** Compress, seal and chain NDJSON `lines` (one event each) under a new data key wrapped with `wrapKey`. */
export async function sealLines(
  id: string,
  lines: readonly string[],
  wrapKey: Buffer,
): Promise<SealedRecording> {
  const dataKey = newDataKey();
  try {
    const parts: Buffer[] = [MAGIC];
    let hash = chainStart(id);
    const groups = pieces(lines);
    for (let i = 0; i < groups.length; i++) {
      // A 16 KiB window and a small state: most recordings are a few KiB, and zlib's setup
      // of its default 256 KiB state cost ten times the compression itself. Small pieces
      // are compressed at once; large ones on the thread pool.
      const piece = groups[i]!;
      const compressed =
        piece.length <= SYNC_DEFLATE_BYTES ? deflateRawSync(piece, DEFLATE) : await deflate(piece, DEFLATE);
      const sealed = seal(dataKey, compressed, chunkAad(id, i));
      const length = Buffer.alloc(4);
      length.writeUInt32BE(sealed.length);
      parts.push(length, sealed);
      hash = chainNext(hash, sealed);
    }
    return {
      file: Buffer.concat(parts),
      hash: hash.toString('hex'),
      chunks: groups.length,
      wrappedKey: seal(wrapKey, dataKey, dataKeyAad(id)),
    };
  } finally {
    dataKey.fill(0);
  }
}

function unreadable(id: string, why: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_RECORDING_UNREADABLE', `recording ${id}: ${why}`, {
    details: { session: id },
  });
}

/** The sealed chunks of a file, each length bounded before it is read. */
export function splitChunks(id: string, file: Buffer): Buffer[] {
  if (file.length < MAGIC.length || !file.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw unreadable(id, 'not a recording file');
  }
  const chunks: Buffer[] = [];
  let at = MAGIC.length;
  while (at < file.length) {
    if (at + 4 > file.length) throw unreadable(id, 'the file ends inside a chunk header');
    const length = file.readUInt32BE(at);
    if (length > MAX_SEALED_CHUNK || at + 4 + length > file.length) {
      throw unreadable(id, 'a chunk is longer than the file or the limit');
    }
    chunks.push(file.subarray(at + 4, at + 4 + length));
    at += 4 + length;
  }
  return chunks;
}

/** The chained hash of a file's sealed chunks (no key needed: `audit verify` uses this). */
export function hashFile(id: string, file: Buffer): { hash: string; chunks: number } {
  const chunks = splitChunks(id, file);
  let hash = chainStart(id);
  for (const chunk of chunks) hash = chainNext(hash, chunk);
  return { hash: hash.toString('hex'), chunks: chunks.length };
}

/**
 * Verify the file against `expectedHash` (from the audit record or the store row), then
 * unwrap the data key and decrypt every chunk. Fails closed with
 * CC_ERR_RECORDING_UNREADABLE on any mismatch.
 */
export async function openRecording(
  id: string,
  file: Buffer,
  expectedHash: string,
  wrappedKey: Buffer | null,
  wrapKey: Buffer,
  maxEvents = 1_000_000,
): Promise<RecordingEvent[]> {
  if (wrappedKey === null) throw unreadable(id, 'it was erased (its data key is destroyed)');
  const chunks = splitChunks(id, file);
  let hash = chainStart(id);
  for (const chunk of chunks) hash = chainNext(hash, chunk);
  if (hash.toString('hex') !== expectedHash)
    throw unreadable(id, 'the file does not match its recorded hash');
  const dataKey = open(wrapKey, wrappedKey, dataKeyAad(id));
  if (dataKey === null) throw unreadable(id, 'its data key does not authenticate');
  try {
    const plainChunks: Buffer[] = [];
    for (let i = 0; i < chunks.length; i++) {
      const plain = open(dataKey, chunks[i]!, chunkAad(id, i));
      if (plain === null) throw unreadable(id, `chunk ${i} does not authenticate`);
      try {
        plainChunks.push(await inflate(plain, { maxOutputLength: MAX_INFLATED_CHUNK }));
      } catch {
        throw unreadable(id, `chunk ${i} does not decompress`);
      }
    }
    const events: RecordingEvent[] = [];
    for (const line of Buffer.concat(plainChunks).toString('utf8').split('\n')) {
      if (line === '') continue;
      if (events.length >= maxEvents) break;
      try {
        events.push(JSON.parse(line) as RecordingEvent);
      } catch {
        throw unreadable(id, 'an event does not parse');
      }
    }
    return events;
  } finally {
    dataKey.fill(0);
  }
}
