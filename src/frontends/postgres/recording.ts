import {
  clip,
  clipText,
  type Payload,
  type RecordingCapture,
  type RecordingLimits,
} from '../../recording/model.js';
import { decodeBackend, decodeDataRow, decodeFrontend } from './protocol/decode.js';
import type { BackendMessage, FrontendMessage, NoticeFields } from './protocol/messages.js';

/** A server frame longer than this is counted, not decoded, for the recording (a huge DataRow). */
const MAX_DECODED_FRAME = 4 * 1024 * 1024;
/** Most columns kept per result. */
const MAX_COLUMNS = 256;

function notice(fields: NoticeFields, limit: number): Record<string, string> {
  const out: Record<string, string> = {};
  const names: Record<string, string> = {
    S: 'severity',
    C: 'code',
    M: 'message',
    D: 'detail',
    H: 'hint',
    P: 'position',
  };
  for (const [code, value] of fields) {
    const name = names[code];
    if (name !== undefined) out[name] = clipText(value, limit);
  }
  return out;
}

/**
 * The PostgreSQL front-end's recording (ADR 0018): what the client sent (statements,
 * parameters — tickets, never the secrets they stand for: substitution happens later, on
 * the way upstream) and what it received, read from the bytes the gateway wrote to the
 * client after inspection and masking (so a masked column is recorded masked). Results
 * are kept up to `maxRowsPerStatement` rows; the row count always.
 */
export class PgRecording {
  readonly #capture: RecordingCapture;
  readonly #limits: RecordingLimits;
  /** Raw bytes as they passed, with when: decoded by the writer, off the request path. */
  readonly #raw: Array<{ at: number; t: number; toClient: boolean; bytes: Buffer }> = [];
  #rawBytes = 0;
  #full = false;
  /** The time of the chunk being decoded (while finishing). */
  #at = 0;
  #t = 0;
  // Frame splitter over the client-bound byte stream.
  readonly #header = Buffer.alloc(5);
  #headerHave = 0;
  #body: Buffer[] | null = null;
  #bodyHave = 0;
  #bodyNeed = 0;
  #skip = 0;
  #skipCode = 0;
  // The result being read.
  #columns: string[] | null = null;
  #rows: Array<Array<Payload | null>> = [];
  #rowCount = 0;
  #started: number | null = null;

  constructor(capture: RecordingCapture) {
    this.#capture = capture;
    this.#limits = capture.limits;
    capture.defer(() => this.#finish());
  }

  /** A frame the client sent (header and body as received): copied, decoded later. */
  clientFrame(raw: Buffer): void {
    this.#keep(raw, false);
  }

  /** Bytes written to the client: copied, decoded later. */
  clientBytes(data: Buffer): void {
    this.#keep(data, true);
  }

  #keep(bytes: Buffer, toClient: boolean): void {
    if (this.#full) return;
    if (this.#rawBytes + bytes.length > this.#limits.maxSessionBytes) {
      this.#full = true;
      this.#capture.truncate(this.#capture.elapsed());
      return;
    }
    this.#rawBytes += bytes.length;
    this.#raw.push({
      at: this.#capture.elapsed(),
      t: performance.now(),
      toClient,
      bytes: Buffer.from(bytes),
    });
    // Counted as held: a long session has its bytes decoded and written in parts as it runs.
    this.#capture.hold(bytes.length);
  }

  #finish(): void {
    for (const chunk of this.#raw.splice(0)) {
      this.#at = chunk.at;
      this.#t = chunk.t;
      if (chunk.toClient) this.#toClient(chunk.bytes);
      else this.#fromClient(chunk.bytes);
    }
  }

  #emit(kind: string, dir: 'in' | 'out', data: Record<string, unknown>): void {
    this.#capture.addAt(this.#at, kind, dir, data);
  }

  #fromClient(raw: Buffer): void {
    let m: FrontendMessage;
    try {
      m = decodeFrontend({ code: raw[0]!, body: raw.subarray(5), raw });
    } catch {
      this.#emit('pg.unreadable', 'in', { code: raw[0]!, bytes: raw.length });
      return;
    }
    this.#message(m);
  }

  /** A message the client sent, as it sent it. */
  #message(m: FrontendMessage): void {
    const limit = this.#limits.maxBodyBytes;
    switch (m.type) {
      case 'Query':
        this.#started = this.#t;
        this.#emit('pg.query', 'in', { sql: clipText(m.sql, limit) });
        return;
      case 'Parse':
        this.#emit('pg.parse', 'in', { name: clipText(m.name, 64), sql: clipText(m.sql, limit) });
        return;
      case 'Bind':
        this.#emit('pg.bind', 'in', {
          portal: clipText(m.portal, 64),
          statement: clipText(m.statement, 64),
          params: m.parameters.slice(0, 1024).map((p) => (p === null ? null : clip(p, limit))),
        });
        return;
      case 'Execute':
        this.#started = this.#t;
        this.#emit('pg.execute', 'in', { portal: clipText(m.portal, 64), maxRows: m.maxRows });
        return;
      case 'CopyData':
        this.#emit('pg.copy', 'in', { data: clip(m.data, limit) });
        return;
      case 'CopyDone':
        this.#emit('pg.copy.done', 'in', {});
        return;
      case 'CopyFail':
        this.#emit('pg.copy.fail', 'in', { message: clipText(m.message, 1024) });
        return;
      case 'FunctionCall':
        this.#emit('pg.function-call', 'in', { bytes: m.data.length });
        return;
      case 'Terminate':
        this.#emit('pg.terminate', 'in', {});
        return;
      default:
        return;
    }
  }

  /** Bytes written to the client (whole frames or not): split into frames and recorded. */
  #toClient(data: Buffer): void {
    let at = 0;
    while (at < data.length) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, data.length - at);
        this.#skip -= n;
        at += n;
        if (this.#skip === 0) this.#skipped(this.#skipCode);
        continue;
      }
      if (this.#body !== null) {
        const n = Math.min(this.#bodyNeed - this.#bodyHave, data.length - at);
        this.#body.push(Buffer.from(data.subarray(at, at + n)));
        this.#bodyHave += n;
        at += n;
        if (this.#bodyHave === this.#bodyNeed) {
          const body = Buffer.concat(this.#body);
          this.#body = null;
          this.#frame(this.#header[0]!, body);
        }
        continue;
      }
      if (this.#headerHave === 0 && data.length - at >= 5) {
        // A whole frame in this write (the usual case): read it in place, no copy.
        const whole = data.readUInt32BE(at + 1) - 4;
        if (whole >= 0 && whole <= MAX_DECODED_FRAME && at + 5 + whole <= data.length) {
          this.#frame(data[at]!, data.subarray(at + 5, at + 5 + whole));
          at += 5 + whole;
          continue;
        }
      }
      const n = Math.min(5 - this.#headerHave, data.length - at);
      data.copy(this.#header, this.#headerHave, at, at + n);
      this.#headerHave += n;
      at += n;
      if (this.#headerHave < 5) continue;
      this.#headerHave = 0;
      const length = this.#header.readUInt32BE(1) - 4;
      if (length < 0) return; // not a frame: stop reading this stream (the client's parser refuses it)
      if (length > MAX_DECODED_FRAME) {
        this.#skip = length;
        this.#skipCode = this.#header[0]!;
        continue;
      }
      if (length === 0) {
        this.#frame(this.#header[0]!, Buffer.alloc(0));
        continue;
      }
      this.#body = [];
      this.#bodyHave = 0;
      this.#bodyNeed = length;
    }
  }

  /** A frame too large to decode for the recording: a row is still counted. */
  #skipped(code: number): void {
    if (code === 0x44) this.#rowCount++;
    else this.#emit('pg.unreadable', 'out', { code });
  }

  #frame(code: number, body: Buffer): void {
    let m: BackendMessage;
    try {
      // DataRow, the bulk of a result, skips the general decoder.
      m =
        code === 0x44
          ? { type: 'DataRow', values: decodeDataRow(body) }
          : decodeBackend({ code, body, raw: body });
    } catch {
      this.#emit('pg.unreadable', 'out', { code, bytes: body.length });
      return;
    }
    this.#backend(m);
  }

  #backend(m: BackendMessage): void {
    const limit = this.#limits.maxBodyBytes;
    switch (m.type) {
      case 'RowDescription':
        this.#columns = m.fields.slice(0, MAX_COLUMNS).map((f) => clipText(f.name, 256));
        this.#rows = [];
        this.#rowCount = 0;
        return;
      case 'DataRow':
        this.#rowCount++;
        if (this.#rows.length < this.#limits.maxRowsPerStatement) {
          this.#rows.push(m.values.slice(0, MAX_COLUMNS).map((v) => (v === null ? null : clip(v, limit))));
        }
        return;
      case 'CommandComplete':
        this.#result(clipText(m.tag, 128));
        return;
      case 'EmptyQueryResponse':
        this.#result('');
        return;
      case 'PortalSuspended':
        this.#result('(suspended)');
        return;
      case 'ErrorResponse':
        if (this.#columns !== null || this.#rowCount > 0) this.#result(null);
        this.#emit('pg.error', 'out', notice(m.fields, 4096));
        this.#started = null;
        return;
      case 'NoticeResponse':
        this.#emit('pg.notice', 'out', notice(m.fields, 4096));
        return;
      case 'NotificationResponse':
        this.#emit('pg.notification', 'out', {
          channel: clipText(m.channel, 256),
          payload: clipText(m.payload, limit),
        });
        return;
      case 'ParameterStatus':
        this.#emit('pg.parameter', 'out', {
          name: clipText(m.name, 256),
          value: clipText(m.value, 1024),
        });
        return;
      case 'CopyInResponse':
      case 'CopyOutResponse':
        this.#emit('pg.copy.start', 'out', {
          direction: m.type === 'CopyInResponse' ? 'in' : 'out',
        });
        return;
      case 'CopyData':
        this.#emit('pg.copy', 'out', { data: clip(m.data, limit) });
        return;
      case 'ReadyForQuery':
        this.#emit('pg.ready', 'out', { status: m.status });
        return;
      default:
        return;
    }
  }

  #result(tag: string | null): void {
    const ms = this.#started === null ? null : Math.round((this.#t - this.#started) * 1000) / 1000;
    this.#emit('pg.result', 'out', {
      ...(tag === null ? {} : { tag }),
      ...(this.#columns === null ? {} : { columns: this.#columns }),
      rows: this.#rows,
      rowCount: this.#rowCount,
      ...(this.#rowCount > this.#rows.length ? { rowsNotKept: this.#rowCount - this.#rows.length } : {}),
      ...(ms === null ? {} : { ms }),
    });
    this.#columns = null;
    this.#rows = [];
    this.#rowCount = 0;
  }
}
