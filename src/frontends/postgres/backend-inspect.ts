import { CoatcheckError } from '../../core/errors.js';
import {
  createDetector,
  type Detector,
  type DetectorOptions,
  keywordIndexFor,
} from '../../detect/detector.js';
import type { ResponseScan } from '../../gateway/inspector.js';
import {
  addOutputForms,
  createOutputForms,
  HEX_PREFIX,
  type OutputForms,
} from '../../gateway/known-secret-index.js';
import { protocolError } from './protocol/framer.js';
import { BACKEND_CODES, type Frame } from './protocol/messages.js';

/**
 * Output inspection for the PostgreSQL front-end: every server-to-client message that can
 * carry text (rows, COPY data, row descriptions, errors, notices, notifications, parameter
 * status) is searched for known vault secrets (raw, base64, url, JSON-escaped, hex) and for
 * detector findings; each one is replaced by a ticket. A frame with no candidate bytes is
 * returned as it came, without being decoded.
 *
 * Pure protocol work: the tickets come from a `ResponseScan` (`pipeline.inspect`), whose
 * inspector must chain the known-secret and detector inspectors (start.ts does).
 */

/** The secrets to look for (the vault's `knownSecrets()`, values revealed). */
export interface OutputSecret {
  readonly id: string;
  readonly value: Buffer;
}

/**
 * The fast-path index: one detector whose known-secret matcher also holds the hex forms
 * of every secret (bytea output, `encode(…, 'hex')`). Build it once per vault generation.
 */
export interface OutputIndex {
  readonly detector: Detector;
  /** True when `bytes` may hold a secret: a known-secret form, a detector finding, or a hex bytea value. */
  candidate(bytes: Buffer): boolean;
  /** One pass for rows: 2 a candidate, 1 no candidate but a detector keyword, 0 neither. */
  probe(bytes: Buffer): 0 | 1 | 2;
  /** Spans of hex-encoded known secrets in `bytes` (latin1). */
  hexSpans(bytes: Buffer): Array<{ start: number; end: number }>;
  /** True when `bytes` holds a detector keyword (`password`, `secret`, `aws`, …). */
  keywordHit(bytes: Buffer): boolean;
  /** True when `value` holds a finding once read as `key=value` (a column name or the value beside it). */
  contextFinding(key: Buffer, value: Buffer): boolean;
}

const EQUALS = Buffer.from('=');

export function createOutputIndex(
  secrets: readonly OutputSecret[],
  options: Omit<DetectorOptions, 'knownSecrets'> = {},
): OutputIndex {
  const forms = createOutputForms();
  for (const s of secrets) addOutputForms(forms, s.id, s.value);
  return outputIndexOver(forms, options);
}

/**
 * The output index over `forms`, which may change afterwards (the shared known-secret
 * index adds and removes secrets in place, ADR 0021): the index reads them on every call.
 */
export function outputIndexOver(
  forms: OutputForms,
  options: Omit<DetectorOptions, 'knownSecrets'> = {},
): OutputIndex {
  const matcher = forms.matcher;
  const short = forms.short;
  const detector = createDetector({ ...options, knownSecrets: matcher });
  // Every rule is keyword-gated: text with no keyword and no known-secret form has no
  // finding, which one pass of the keyword automaton and one of the indexed matcher show.
  const keywords = keywordIndexFor([...new Set(detector.rules.flatMap((r) => r.keywords))]);
  const hasFinding = (bytes: Buffer): boolean => {
    if (matcher.size > 0 && matcher.find(bytes.toString('latin1'), 'bytes', bytes).length > 0) return true;
    return keywords.has(bytes) && detector.scan(bytes).length > 0;
  };
  const probe = (bytes: Buffer): 0 | 1 | 2 => {
    for (const list of short.values()) for (const s of list) if (bytes.indexOf(s) !== -1) return 2;
    if (matcher.size > 0 && matcher.find(bytes.toString('latin1'), 'bytes', bytes).length > 0) return 2;
    const keyword = keywords.has(bytes);
    if (keyword && detector.scan(bytes).length > 0) return 2;
    // Detector findings inside a bytea value are visible only once decoded.
    if (bytes.indexOf('\\x') !== -1 && hexCandidate(bytes, hasFinding)) return 2;
    return keyword ? 1 : 0;
  };
  return {
    detector,
    probe,
    candidate(bytes) {
      return probe(bytes) === 2;
    },
    keywordHit(bytes) {
      return keywords.has(bytes);
    },
    contextFinding(key, value) {
      const text = Buffer.concat([key, EQUALS, value]);
      return detector.scan(text).some((f) => f.end > key.length + 1);
    },
    hexSpans(bytes) {
      return matcher
        .find(bytes.toString('latin1'), 'bytes', bytes)
        .filter((m) => m.secretId.startsWith(HEX_PREFIX) && m.encoding === 'raw')
        .map((m) => ({ start: m.start, end: m.end }));
    },
  };
}

const HEX_RUN = /\\\\?x((?:[0-9a-fA-F]{2}){4,})/g;

/** A `\x…` (or COPY-escaped `\\x…`) hex run whose decoded bytes hold a finding. */
function hexCandidate(bytes: Buffer, hasFinding: (bytes: Buffer) => boolean): boolean {
  const text = bytes.toString('latin1');
  for (const m of text.matchAll(HEX_RUN)) {
    if (hasFinding(Buffer.from(m[1]!, 'hex'))) return true;
  }
  return false;
}

function isByteaHex(v: Buffer): boolean {
  if (v.length < 4 || v[0] !== 0x5c || v[1] !== 0x78 || v.length % 2 !== 0) return false;
  for (let i = 2; i < v.length; i++) {
    const c = v[i]!;
    if (!((c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46))) return false;
  }
  return true;
}

/** How deep hex inside hex is decoded (a bytea holding the hex text of a secret). */
const MAX_HEX_DEPTH = 2;

/** Most fields of one binary COPY tuple (PostgreSQL allows 1600 columns). */
const MAX_COPY_FIELDS = 1664;
const COPY_SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

/**
 * One session's output inspector. Stateful only for COPY (the format comes from
 * CopyOutResponse / CopyBothResponse). Feed it every backend frame in order.
 */
export class BackendInspector {
  readonly #index: () => OutputIndex;
  readonly #scan: () => Promise<ResponseScan>;
  /** Names of the last RowDescription's columns, where a name holds a detector keyword (else null). */
  #keyColumns: Array<Buffer | null> = [];
  /** The RowDescription body `#keyColumns` was read from (a copy), and the index that read it. */
  #described: Buffer = Buffer.alloc(0);
  #describedWith: OutputIndex | null = null;
  /** COPY in progress from the server: 0 text/CSV, 1 binary; null none. */
  #copyFormat: 0 | 1 | null = null;
  /** Binary COPY: the file header has been read. */
  #copyHeader = false;
  /** Values replaced so far. */
  replaced = 0;

  constructor(index: () => OutputIndex, scan: () => Promise<ResponseScan>) {
    this.#index = index;
    this.#scan = scan;
  }

  /**
   * The bytes to send to the client for one backend frame: `frame.raw` itself (same
   * Buffer) when nothing needed replacing, else a re-encoded frame. Synchronous on the
   * fast path. Throws CC_ERR_PG_MASKING_FAILED when a finding could not be replaced.
   */
  inspect(frame: Frame): Buffer | Promise<Buffer> {
    switch (frame.code) {
      case BACKEND_CODES.CopyOutResponse:
      case BACKEND_CODES.CopyBothResponse:
        this.#copyFormat = frame.body[0] === 1 ? 1 : 0;
        this.#copyHeader = false;
        return frame.raw;
      case BACKEND_CODES.CopyDone:
      case BACKEND_CODES.CommandComplete:
      case BACKEND_CODES.ReadyForQuery:
        this.#copyFormat = null;
        return frame.raw;
      case BACKEND_CODES.ErrorResponse:
        this.#copyFormat = null;
        return this.#fields(frame, noticeParts, encodeNoticeParts);
      case BACKEND_CODES.NoticeResponse:
        return this.#fields(frame, noticeParts, encodeNoticeParts);
      case BACKEND_CODES.ParameterStatus:
        return this.#fields(frame, cstringParts(2), encodeCstrings);
      case BACKEND_CODES.NotificationResponse:
        return this.#fields(frame, notificationParts, encodeNotification);
      case BACKEND_CODES.RowDescription: {
        const index = this.#index();
        // A session repeats its statements' descriptions: their names are read again only
        // when the bytes (or the index, whose keywords decide) differ from the last ones.
        if (index !== this.#describedWith || !this.#described.equals(frame.body)) {
          const names = rowDescriptionParts(frame.body).values as Buffer[];
          this.#keyColumns = names.map((n) => (index.keywordHit(n) ? Buffer.from(n) : null));
          this.#described = Buffer.from(frame.body);
          this.#describedWith = index;
        }
        return this.#fields(frame, rowDescriptionParts, encodeRowDescription);
      }
      case BACKEND_CODES.DataRow:
        return this.#dataRow(frame);
      case BACKEND_CODES.FunctionCallResponse:
        return this.#fields(frame, functionResultParts, encodeFunctionResult);
      case BACKEND_CODES.CopyData:
        if (this.#copyFormat === 1) return this.#binaryCopy(frame);
        return this.#fields(frame, (b) => ({ head: Buffer.alloc(0), values: [b] }), encodeWhole);
      default:
        return frame.raw;
    }
  }

  /**
   * A row: every value as in `#fields`, and in context — a value under a column named
   * like a secret (`password`, `aws_secret_access_key`), or beside a value that names one
   * (a key/value settings table), is read as `key=value` so the detector's rules that need
   * the key find it, as they would in a JSON body.
   */
  #dataRow(frame: Frame): Buffer | Promise<Buffer> {
    const index = this.#index();
    const probe = index.probe(frame.body);
    const direct = probe === 2;
    if (probe === 0 && !this.#keyColumns.some((k) => k !== null)) return frame.raw;
    const parts = dataRowParts(frame.body);
    const original = parts.values.slice();
    const contexts = original.map((v, i) => {
      if (v === null) return [];
      const keys: Buffer[] = [];
      const named = this.#keyColumns[i];
      if (named !== null && named !== undefined) keys.push(named);
      const before = i > 0 ? original[i - 1] : null;
      if (before !== null && before !== undefined && before.length <= 256 && index.keywordHit(before))
        keys.push(before);
      return keys.filter((k) => index.contextFinding(k, v));
    });
    if (!direct && contexts.every((k) => k.length === 0)) return frame.raw;
    return (async () => {
      let changed = false;
      for (let i = 0; i < parts.values.length; i++) {
        const v = parts.values[i];
        if (v === null || v === undefined) continue;
        let r = direct ? await this.replace(v) : v;
        for (const key of contexts[i]!) r = await this.#replaceInContext(key, r);
        if (r !== v) {
          parts.values[i] = r;
          changed = true;
        }
      }
      return changed ? encodeDataRowParts(frame.code, parts) : frame.raw;
    })();
  }

  /** `value` read as `key=value`: findings in the value become tickets; one left fails closed. */
  async #replaceInContext(key: Buffer, value: Buffer): Promise<Buffer> {
    const index = this.#index();
    if (!index.contextFinding(key, value)) return value;
    const prefix = Buffer.concat([key, EQUALS]);
    const scan = await this.#scan();
    const out = Buffer.from(await scan.header(Buffer.concat([prefix, value]).toString('latin1')), 'latin1');
    const replaced = out.subarray(0, prefix.length).equals(prefix) ? out.subarray(prefix.length) : null;
    if (replaced === null || index.contextFinding(key, replaced)) {
      throw new CoatcheckError(
        'CC_ERR_PG_MASKING_FAILED',
        'coatcheck: a secret in a server message could not be replaced by a ticket; the session was closed',
      );
    }
    this.replaced++;
    return Buffer.from(replaced);
  }

  #fields(frame: Frame, split: (body: Buffer) => Parts, join: (code: number, p: Parts) => Buffer) {
    if (!this.#index().candidate(frame.body)) return frame.raw;
    return (async () => {
      const parts = split(frame.body);
      let changed = false;
      for (let i = 0; i < parts.values.length; i++) {
        const v = parts.values[i];
        if (v === null || v === undefined) continue;
        const r = await this.replace(v);
        if (r !== v) {
          parts.values[i] = r;
          changed = true;
        }
      }
      return changed ? join(frame.code, parts) : frame.raw;
    })();
  }

  #binaryCopy(frame: Frame): Buffer | Promise<Buffer> {
    let body = frame.body;
    let header: Buffer = Buffer.alloc(0);
    if (!this.#copyHeader) {
      // The file header comes in the first CopyData, before the first tuple.
      if (body.length < 19 || !body.subarray(0, 11).equals(COPY_SIGNATURE))
        throw protocolError('binary COPY data does not start with the PGCOPY signature', {
          type: 'CopyData',
        });
      const extension = body.readUInt32BE(15);
      if (extension > body.length - 19)
        throw protocolError('binary COPY header extension is truncated', { type: 'CopyData' });
      header = body.subarray(0, 19 + extension);
      body = body.subarray(19 + extension);
      this.#copyHeader = true;
    }
    if (!this.#index().candidate(frame.body)) return frame.raw;
    const tuples = binaryTuples(body);
    return (async () => {
      let changed = false;
      for (const tuple of tuples) {
        if (tuple === 'trailer') continue;
        for (let i = 0; i < tuple.length; i++) {
          const v = tuple[i];
          if (v === null || v === undefined) continue;
          const r = await this.replace(v);
          if (r !== v) {
            tuple[i] = r;
            changed = true;
          }
        }
      }
      if (!changed) return frame.raw;
      return frameOf(BACKEND_CODES.CopyData, [header, encodeBinaryTuples(tuples)]);
    })();
  }

  /**
   * One value with every secret replaced (the same Buffer when there was none): a bytea
   * hex value (`\\x…`, also inside text COPY) is decoded, scanned and re-encoded; known
   * secrets and detector findings go through the session's ResponseScan; hex forms of
   * known secrets become the hex of their ticket. A finding left after that fails closed.
   */
  async replace(value: Buffer, depth = 0): Promise<Buffer> {
    const index = this.#index();
    if (isByteaHex(value) && depth < MAX_HEX_DEPTH) {
      const inner = Buffer.from(value.toString('latin1', 2), 'hex');
      const r = await this.replace(inner, depth + 1);
      return r === inner ? value : Buffer.concat([value.subarray(0, 2), Buffer.from(r.toString('hex'))]);
    }
    if (!index.candidate(value)) return value;
    const scan = await this.#scan();
    let out: Buffer = Buffer.from(await scan.header(value.toString('latin1')), 'latin1');
    if (depth < MAX_HEX_DEPTH) out = await this.#hexRuns(out, depth);
    const spans = index.hexSpans(out);
    if (spans.length > 0) {
      const parts: Buffer[] = [];
      let at = 0;
      for (const s of spans) {
        if (s.start < at) continue;
        const hex = out.toString('latin1', s.start, s.end);
        const inner = Buffer.from(hex, 'hex');
        const ticket = Buffer.from(await scan.header(inner.toString('latin1')), 'latin1').toString('hex');
        parts.push(
          out.subarray(at, s.start),
          Buffer.from(hex === hex.toLowerCase() ? ticket : ticket.toUpperCase()),
        );
        at = s.end;
      }
      parts.push(out.subarray(at));
      out = Buffer.concat(parts);
    }
    if (index.candidate(out)) {
      throw new CoatcheckError(
        'CC_ERR_PG_MASKING_FAILED',
        'coatcheck: a secret in a server message could not be replaced by a ticket; the session was closed',
      );
    }
    if (out.equals(value)) return value;
    this.replaced++;
    return out;
  }

  /** `\\x…` hex runs inside a longer text (text COPY, a row_to_json of a bytea): decoded and scanned. */
  async #hexRuns(text: Buffer, depth: number): Promise<Buffer> {
    if (text.indexOf('\\x') === -1) return text;
    const latin = text.toString('latin1');
    const parts: Buffer[] = [];
    let at = 0;
    for (const m of latin.matchAll(HEX_RUN)) {
      const hex = m[1]!;
      const start = m.index + m[0].length - hex.length;
      const inner = Buffer.from(hex, 'hex');
      const r = await this.replace(inner, depth + 1);
      if (r === inner) continue;
      parts.push(text.subarray(at, start), Buffer.from(r.toString('hex')));
      at = start + hex.length;
    }
    if (parts.length === 0) return text;
    parts.push(text.subarray(at));
    return Buffer.concat(parts);
  }
}

// ---- message bodies as a fixed head plus replaceable values --------------------------

interface Parts {
  readonly head: Buffer;
  readonly values: Array<Buffer | null>;
  /** Per value, bytes that follow it unchanged (RowDescription's fixed field data, notice codes). */
  readonly tails?: Buffer[];
}

function frameOf(code: number, parts: readonly Buffer[]): Buffer {
  let size = 4;
  for (const p of parts) size += p.length;
  const out = Buffer.allocUnsafe(1 + size);
  out[0] = code;
  out.writeInt32BE(size, 1);
  let at = 5;
  for (const p of parts) {
    p.copy(out, at);
    at += p.length;
  }
  return out;
}

function cstringAt(body: Buffer, at: number, what: string): number {
  const end = body.indexOf(0, at);
  if (end < 0) throw protocolError(`${what} has an unterminated string`, { type: what });
  return end;
}

/** A value written back as a C string must not gain a NUL (a ticket never has one). */
function assertNoNul(v: Buffer, what: string): Buffer {
  if (v.indexOf(0) !== -1) throw protocolError(`${what} replacement holds a NUL`, { type: what });
  return v;
}

/** ErrorResponse / NoticeResponse: (code byte, C string)*, then a 0. */
function noticeParts(body: Buffer): Parts {
  const values: Buffer[] = [];
  const tails: Buffer[] = [];
  let at = 0;
  for (;;) {
    if (at >= body.length) throw protocolError('notice fields are truncated', { type: 'ErrorResponse' });
    const code = body[at]!;
    if (code === 0) {
      if (at + 1 !== body.length) throw protocolError('notice has trailing bytes', { type: 'ErrorResponse' });
      break;
    }
    const end = cstringAt(body, at + 1, 'ErrorResponse');
    tails.push(body.subarray(at, at + 1));
    values.push(body.subarray(at + 1, end));
    at = end + 1;
  }
  return { head: Buffer.alloc(0), values, tails };
}

function encodeNoticeParts(code: number, p: Parts): Buffer {
  const parts: Buffer[] = [];
  p.values.forEach((v, i) => {
    parts.push(p.tails![i]!, assertNoNul(v!, 'ErrorResponse'), Buffer.from([0]));
  });
  parts.push(Buffer.from([0]));
  return frameOf(code, parts);
}

function cstringParts(n: number) {
  return (body: Buffer): Parts => {
    const values: Buffer[] = [];
    let at = 0;
    for (let i = 0; i < n; i++) {
      const end = cstringAt(body, at, 'ParameterStatus');
      values.push(body.subarray(at, end));
      at = end + 1;
    }
    if (at !== body.length) throw protocolError('message has trailing bytes', { type: 'ParameterStatus' });
    return { head: Buffer.alloc(0), values };
  };
}

function encodeCstrings(code: number, p: Parts): Buffer {
  const parts: Buffer[] = [p.head];
  for (const v of p.values) parts.push(assertNoNul(v!, 'message'), Buffer.from([0]));
  return frameOf(code, parts);
}

function notificationParts(body: Buffer): Parts {
  if (body.length < 4)
    throw protocolError('NotificationResponse is truncated', { type: 'NotificationResponse' });
  const rest = cstringParts(2)(body.subarray(4));
  return { head: body.subarray(0, 4), values: rest.values };
}

const encodeNotification = encodeCstrings;

/** RowDescription: int16 count, then per field a name and 18 bytes of fixed data. */
function rowDescriptionParts(body: Buffer): Parts {
  if (body.length < 2) throw protocolError('RowDescription is truncated', { type: 'RowDescription' });
  const n = body.readInt16BE(0);
  if (n < 0 || n * 19 > body.length - 2)
    throw protocolError('RowDescription declares more fields than fit', { type: 'RowDescription' });
  const values: Buffer[] = [];
  const tails: Buffer[] = [];
  let at = 2;
  for (let i = 0; i < n; i++) {
    const end = cstringAt(body, at, 'RowDescription');
    if (end + 1 + 18 > body.length)
      throw protocolError('RowDescription is truncated', { type: 'RowDescription' });
    values.push(body.subarray(at, end));
    tails.push(body.subarray(end, end + 19));
    at = end + 19;
  }
  if (at !== body.length)
    throw protocolError('RowDescription has trailing bytes', { type: 'RowDescription' });
  return { head: body.subarray(0, 2), values, tails };
}

function encodeRowDescription(code: number, p: Parts): Buffer {
  const parts: Buffer[] = [p.head];
  p.values.forEach((v, i) => {
    parts.push(assertNoNul(v!, 'RowDescription'), p.tails![i]!);
  });
  return frameOf(code, parts);
}

function dataRowParts(body: Buffer): Parts {
  if (body.length < 2) throw protocolError('DataRow is truncated', { type: 'DataRow' });
  const n = body.readInt16BE(0);
  if (n < 0 || n * 4 > body.length - 2)
    throw protocolError('DataRow declares too many values', { type: 'DataRow' });
  const values: Array<Buffer | null> = [];
  let at = 2;
  for (let i = 0; i < n; i++) {
    if (at + 4 > body.length) throw protocolError('DataRow is truncated', { type: 'DataRow' });
    const len = body.readInt32BE(at);
    at += 4;
    if (len === -1) values.push(null);
    else if (len < -1 || len > body.length - at)
      throw protocolError('DataRow has a bad value length', { type: 'DataRow' });
    else {
      values.push(body.subarray(at, at + len));
      at += len;
    }
  }
  if (at !== body.length) throw protocolError('DataRow has trailing bytes', { type: 'DataRow' });
  return { head: body.subarray(0, 2), values };
}

function lengthPrefixed(head: Buffer, values: ReadonlyArray<Buffer | null>): Buffer[] {
  const parts: Buffer[] = [head];
  for (const v of values) {
    const len = Buffer.allocUnsafe(4);
    len.writeInt32BE(v === null ? -1 : v.length);
    parts.push(len);
    if (v !== null) parts.push(v);
  }
  return parts;
}

function encodeDataRowParts(code: number, p: Parts): Buffer {
  return frameOf(code, lengthPrefixed(p.head, p.values));
}

function functionResultParts(body: Buffer): Parts {
  if (body.length < 4)
    throw protocolError('FunctionCallResponse is truncated', { type: 'FunctionCallResponse' });
  const len = body.readInt32BE(0);
  if (len === -1 && body.length === 4) return { head: Buffer.alloc(0), values: [null] };
  if (len < 0 || len !== body.length - 4)
    throw protocolError('FunctionCallResponse has a bad length', { type: 'FunctionCallResponse' });
  return { head: Buffer.alloc(0), values: [body.subarray(4)] };
}

function encodeFunctionResult(code: number, p: Parts): Buffer {
  return frameOf(code, lengthPrefixed(p.head, p.values));
}

function encodeWhole(code: number, p: Parts): Buffer {
  return frameOf(code, [p.values[0]!]);
}

/**
 * Binary COPY tuples of one CopyData message: int16 field count (-1 is the trailer),
 * then per field an int32 length (-1 for NULL) and the bytes.
 */
type Tuple = Array<Buffer | null> | 'trailer';

function binaryTuples(body: Buffer): Tuple[] {
  const tuples: Tuple[] = [];
  let at = 0;
  while (at < body.length) {
    if (at + 2 > body.length) throw protocolError('binary COPY tuple is truncated', { type: 'CopyData' });
    const n = body.readInt16BE(at);
    at += 2;
    if (n === -1) {
      if (at !== body.length)
        throw protocolError('binary COPY has data after its trailer', { type: 'CopyData' });
      tuples.push('trailer');
      break;
    }
    if (n < 0 || n > MAX_COPY_FIELDS)
      throw protocolError('binary COPY tuple has a bad field count', { type: 'CopyData' });
    const tuple: Array<Buffer | null> = [];
    for (let i = 0; i < n; i++) {
      if (at + 4 > body.length) throw protocolError('binary COPY tuple is truncated', { type: 'CopyData' });
      const len = body.readInt32BE(at);
      at += 4;
      if (len === -1) tuple.push(null);
      else if (len < -1 || len > body.length - at)
        throw protocolError('binary COPY field has a bad length', { type: 'CopyData' });
      else {
        tuple.push(body.subarray(at, at + len));
        at += len;
      }
    }
    tuples.push(tuple);
  }
  return tuples;
}

function encodeBinaryTuples(tuples: readonly Tuple[]): Buffer {
  const parts: Buffer[] = [];
  for (const tuple of tuples) {
    const count = Buffer.allocUnsafe(2);
    if (tuple === 'trailer') {
      count.writeInt16BE(-1);
      parts.push(count);
      continue;
    }
    count.writeInt16BE(tuple.length);
    parts.push(...lengthPrefixed(count, tuple));
  }
  return Buffer.concat(parts);
}

// ---- statements that read masked columns ------------------------------------------

/**
 * The ErrorResponse (or NoticeResponse) to send in place of `frame` when the statement
 * that caused it reads a masked column: severity and SQLSTATE kept, every text field
 * (message, detail, hint, where, context, schema/table/column/constraint names, source
 * position) replaced by a fixed message naming CC_ERR_PG_MASKED_ERROR.
 */
export function withheldNotice(frame: Frame): Buffer {
  const parts = noticeParts(frame.body);
  let severity = frame.code === BACKEND_CODES.ErrorResponse ? 'ERROR' : 'NOTICE';
  let sqlstate = 'XX000';
  let localized: string | null = null;
  parts.values.forEach((v, i) => {
    const code = parts.tails![i]![0]!;
    const text = v!.toString('latin1');
    // Severity and SQLSTATE are fixed vocabularies: anything else is not passed on.
    if (code === 0x43 && /^[0-9A-Z]{5}$/.test(text)) sqlstate = text;
    else if (code === 0x56 && /^[A-Z]{1,10}$/.test(text)) severity = text;
    else if (code === 0x53 && /^[A-Z]{1,10}$/.test(text)) localized = text;
  });
  const what = frame.code === BACKEND_CODES.ErrorResponse ? 'failed' : 'raised a notice';
  const message = `coatcheck: the statement ${what} (SQLSTATE ${sqlstate}); the server's message was withheld because the statement reads masked columns`;
  const fields: Array<[string, string]> = [
    ['S', localized ?? severity],
    ['V', severity],
    ['C', sqlstate],
    ['M', message],
    ['D', 'CC_ERR_PG_MASKED_ERROR'],
  ];
  return frameOf(frame.code, [
    ...fields.map(([k, v]) => Buffer.from(`${k}${v}\0`, 'latin1')),
    Buffer.from([0]),
  ]);
}
