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

/** Chunks per part of a recording written while its session runs (every part but the last). */
export const PART_CHUNKS = 4;
/** Plain NDJSON bytes per part (a session holding this much writes a part). */
export const PART_PLAIN_BYTES = PART_CHUNKS * CHUNK_PLAIN_BYTES;

/**
 * Seals one recording's NDJSON stream chunk by chunk, under one data key and one hash
 * chain, so a long session can be written in parts while it runs (ADR 0024): every part
 * but the last holds exactly PART_CHUNKS full chunks; the chunks of all parts, in order,
 * are exactly the chunks of the same recording sealed at once.
 */
export class RecordingSealer {
  readonly id: string;
  #dataKey: Buffer | null = newDataKey();
  #hash: Buffer;
  #chunks = 0;
  #held: Buffer[] = [];
  #heldBytes = 0;

  constructor(id: string) {
    this.id = id;
    this.#hash = chainStart(id);
  }

  get chunks(): number {
    return this.#chunks;
  }

  /** Add NDJSON lines (one event each, without newlines). */
  push(lines: readonly string[]): void {
    if (lines.length === 0) return;
    const bytes = Buffer.from(`${lines.join('\n')}\n`, 'utf8');
    this.#held.push(bytes);
    this.#heldBytes += bytes.length;
  }

  /** Whether a whole part is held. */
  get partReady(): boolean {
    return this.#heldBytes >= PART_PLAIN_BYTES;
  }

  /** A part of exactly PART_CHUNKS full chunks, or null when less than that is held. */
  async sealPart(): Promise<Buffer | null> {
    if (!this.partReady) return null;
    const all = Buffer.concat(this.#held);
    this.#held = [all.subarray(PART_PLAIN_BYTES)];
    this.#heldBytes = all.length - PART_PLAIN_BYTES;
    return this.#sealPieces(all.subarray(0, PART_PLAIN_BYTES));
  }

  /** Everything held, as the last part (no chunk when nothing is held). */
  async sealRest(): Promise<Buffer> {
    const all = Buffer.concat(this.#held);
    this.#held = [];
    this.#heldBytes = 0;
    return this.#sealPieces(all);
  }

  /** The chained hash, the chunk count and the data key wrapped with `wrapKey`; the key is then forgotten. */
  finish(wrapKey: Buffer): { hash: string; chunks: number; wrappedKey: Buffer } {
    const key = this.#key();
    try {
      return {
        hash: this.#hash.toString('hex'),
        chunks: this.#chunks,
        wrappedKey: seal(wrapKey, key, dataKeyAad(this.id)),
      };
    } finally {
      this.destroy();
    }
  }

  /** Forget the data key (a recording abandoned: its parts can no longer be read). */
  destroy(): void {
    this.#dataKey?.fill(0);
    this.#dataKey = null;
    this.#held = [];
    this.#heldBytes = 0;
  }

  #key(): Buffer {
    if (this.#dataKey === null) throw new Error('recording sealer used after it finished');
    return this.#dataKey;
  }

  async #sealPieces(all: Buffer): Promise<Buffer> {
    const parts: Buffer[] = [MAGIC];
    for (let at = 0; at < all.length; at += CHUNK_PLAIN_BYTES) {
      // A 16 KiB window and a small state: most recordings are a few KiB, and zlib's setup
      // of its default 256 KiB state cost ten times the compression itself. Small pieces
      // are compressed at once; large ones on the thread pool.
      const piece = all.subarray(at, at + CHUNK_PLAIN_BYTES);
      const compressed =
        piece.length <= SYNC_DEFLATE_BYTES ? deflateRawSync(piece, DEFLATE) : await deflate(piece, DEFLATE);
      const sealed = seal(this.#key(), compressed, chunkAad(this.id, this.#chunks));
      const length = Buffer.alloc(4);
      length.writeUInt32BE(sealed.length);
      parts.push(length, sealed);
      this.#hash = chainNext(this.#hash, sealed);
      this.#chunks++;
    }
    return Buffer.concat(parts);
  }
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
  const sealer = new RecordingSealer(id);
  try {
    sealer.push(lines);
    const file = await sealer.sealRest();
    return { file, ...sealer.finish(wrapKey) };
  } finally {
    sealer.destroy();
  }
}

/** One recording file from its parts, in order: the magic, then every part's chunks. */
export function joinParts(id: string, parts: readonly Buffer[]): Buffer {
  const bodies: Buffer[] = [MAGIC];
  for (const part of parts) {
    if (part.length < MAGIC.length || !part.subarray(0, MAGIC.length).equals(MAGIC)) {
      throw unreadable(id, 'a part is not a recording file');
    }
    bodies.push(part.subarray(MAGIC.length));
  }
  return Buffer.concat(bodies);
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
