import type { GatewaySession } from '../../gateway/session.js';
import { clip, clipText, type Payload, type RecordingLimits } from '../../recording/model.js';
import { decodeBackend, decodeDataRow } from './protocol/decode.js';
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
  readonly #session: GatewaySession;
  readonly #limits: RecordingLimits;
  readonly #now: () => number;
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

  constructor(session: GatewaySession, limits: RecordingLimits, now: () => number) {
    this.#session = session;
    this.#limits = limits;
    this.#now = now;
  }

  /** A message the client sent, as it sent it. */
  fromClient(m: FrontendMessage): void {
    const limit = this.#limits.maxBodyBytes;
    switch (m.type) {
      case 'Query':
        this.#started = this.#now();
        this.#session.record('pg.query', 'in', { sql: clipText(m.sql, limit) });
        return;
      case 'Parse':
        this.#session.record('pg.parse', 'in', { name: clipText(m.name, 64), sql: clipText(m.sql, limit) });
        return;
      case 'Bind':
        this.#session.record('pg.bind', 'in', {
          portal: clipText(m.portal, 64),
          statement: clipText(m.statement, 64),
          params: m.parameters.slice(0, 1024).map((p) => (p === null ? null : clip(p, limit))),
        });
        return;
      case 'Execute':
        this.#started = this.#now();
        this.#session.record('pg.execute', 'in', { portal: clipText(m.portal, 64), maxRows: m.maxRows });
        return;
      case 'CopyData':
        this.#session.record('pg.copy', 'in', { data: clip(m.data, limit) });
        return;
      case 'CopyDone':
        this.#session.record('pg.copy.done', 'in', {});
        return;
      case 'CopyFail':
        this.#session.record('pg.copy.fail', 'in', { message: clipText(m.message, 1024) });
        return;
      case 'FunctionCall':
        this.#session.record('pg.function-call', 'in', { bytes: m.data.length });
        return;
      case 'Terminate':
        this.#session.record('pg.terminate', 'in', {});
        return;
      default:
        return;
    }
  }

  /** Bytes written to the client (whole frames or not): split into frames and recorded. */
  toClient(data: Buffer): void {
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
    else this.#session.record('pg.unreadable', 'out', { code });
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
      this.#session.record('pg.unreadable', 'out', { code, bytes: body.length });
      return;
    }
    this.#message(m);
  }

  #message(m: BackendMessage): void {
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
        this.#session.record('pg.error', 'out', notice(m.fields, 4096));
        this.#started = null;
        return;
      case 'NoticeResponse':
        this.#session.record('pg.notice', 'out', notice(m.fields, 4096));
        return;
      case 'NotificationResponse':
        this.#session.record('pg.notification', 'out', {
          channel: clipText(m.channel, 256),
          payload: clipText(m.payload, limit),
        });
        return;
      case 'ParameterStatus':
        this.#session.record('pg.parameter', 'out', {
          name: clipText(m.name, 256),
          value: clipText(m.value, 1024),
        });
        return;
      case 'CopyInResponse':
      case 'CopyOutResponse':
        this.#session.record('pg.copy.start', 'out', {
          direction: m.type === 'CopyInResponse' ? 'in' : 'out',
        });
        return;
      case 'CopyData':
        this.#session.record('pg.copy', 'out', { data: clip(m.data, limit) });
        return;
      case 'ReadyForQuery':
        this.#session.record('pg.ready', 'out', { status: m.status });
        return;
      default:
        return;
    }
  }

  #result(tag: string | null): void {
    const ms = this.#started === null ? null : this.#now() - this.#started;
    this.#session.record('pg.result', 'out', {
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
