import {
  BACKEND_CODES,
  type BackendMessage,
  CANCEL_REQUEST_CODE,
  FRONTEND_CODES,
  type FrontendMessage,
  GSSENC_REQUEST_CODE,
  type NoticeFields,
  SSL_REQUEST_CODE,
  type StartupPhaseMessage,
} from './messages.js';

/** Serializers: pure functions from a message to its bytes. */

class Writer {
  readonly parts: Buffer[] = [];
  size = 0;

  #push(b: Buffer): this {
    this.parts.push(b);
    this.size += b.length;
    return this;
  }

  int32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeInt32BE(v | 0);
    return this.#push(b);
  }

  int16(v: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeInt16BE(((v << 16) >> 16) | 0);
    return this.#push(b);
  }

  byte(v: number): this {
    return this.#push(Buffer.from([v & 0xff]));
  }

  cstring(s: string): this {
    return this.#push(Buffer.from(`${s}\0`, 'utf8'));
  }

  bytes(b: Buffer): this {
    return this.#push(b);
  }

  /** A typed message: type byte, int32 length (including itself), body. */
  frame(code: number): Buffer {
    const out = Buffer.allocUnsafe(5 + this.size);
    out[0] = code;
    out.writeInt32BE(4 + this.size, 1);
    let at = 5;
    for (const p of this.parts) {
      p.copy(out, at);
      at += p.length;
    }
    return out;
  }

  /** A startup-phase message: int32 length (including itself), body. */
  untyped(): Buffer {
    const out = Buffer.allocUnsafe(4 + this.size);
    out.writeInt32BE(4 + this.size, 0);
    let at = 4;
    for (const p of this.parts) {
      p.copy(out, at);
      at += p.length;
    }
    return out;
  }
}

export function encodeStartup(m: StartupPhaseMessage): Buffer {
  const w = new Writer();
  switch (m.type) {
    case 'SSLRequest':
      return w.int32(SSL_REQUEST_CODE).untyped();
    case 'GSSENCRequest':
      return w.int32(GSSENC_REQUEST_CODE).untyped();
    case 'CancelRequest':
      return w.int32(CANCEL_REQUEST_CODE).int32(m.processId).int32(m.secretKey).untyped();
    case 'StartupMessage':
      w.int32((m.major << 16) | m.minor);
      for (const [k, v] of m.parameters) w.cstring(k).cstring(v);
      return w.byte(0).untyped();
  }
}

export function encodeFrontend(m: FrontendMessage): Buffer {
  const w = new Writer();
  const code = FRONTEND_CODES[m.type];
  switch (m.type) {
    case 'Query':
      return w.cstring(m.sql).frame(code);
    case 'Parse':
      w.cstring(m.name).cstring(m.sql).int16(m.parameterTypes.length);
      for (const t of m.parameterTypes) w.int32(t);
      return w.frame(code);
    case 'Bind':
      w.cstring(m.portal).cstring(m.statement).int16(m.parameterFormats.length);
      for (const f of m.parameterFormats) w.int16(f);
      w.int16(m.parameters.length);
      for (const p of m.parameters) {
        if (p === null) w.int32(-1);
        else w.int32(p.length).bytes(p);
      }
      w.int16(m.resultFormats.length);
      for (const f of m.resultFormats) w.int16(f);
      return w.frame(code);
    case 'Describe':
    case 'Close':
      return w.byte(m.kind.charCodeAt(0)).cstring(m.name).frame(code);
    case 'Execute':
      return w.cstring(m.portal).int32(m.maxRows).frame(code);
    case 'Sync':
    case 'Flush':
    case 'CopyDone':
    case 'Terminate':
      return w.frame(code);
    case 'CopyData':
      return w.bytes(m.data).frame(code);
    case 'CopyFail':
      return w.cstring(m.message).frame(code);
    case 'PasswordMessage':
    case 'FunctionCall':
      return w.bytes(m.data).frame(code);
  }
}

function notice(w: Writer, fields: NoticeFields): Writer {
  for (const [k, v] of fields) w.byte(k.charCodeAt(0)).cstring(v);
  return w.byte(0);
}

export function encodeBackend(m: BackendMessage): Buffer {
  const w = new Writer();
  const code = BACKEND_CODES[m.type];
  switch (m.type) {
    case 'Authentication':
      return w.int32(m.code).bytes(m.data).frame(code);
    case 'BackendKeyData':
      return w.int32(m.processId).int32(m.secretKey).frame(code);
    case 'ParameterStatus':
      return w.cstring(m.name).cstring(m.value).frame(code);
    case 'ReadyForQuery':
      return w.byte(m.status.charCodeAt(0)).frame(code);
    case 'ErrorResponse':
    case 'NoticeResponse':
      return notice(w, m.fields).frame(code);
    case 'RowDescription':
      w.int16(m.fields.length);
      for (const f of m.fields) {
        w.cstring(f.name)
          .int32(f.tableOid)
          .int16(f.columnAttr)
          .int32(f.typeOid)
          .int16(f.typeSize)
          .int32(f.typeModifier)
          .int16(f.format);
      }
      return w.frame(code);
    case 'DataRow':
      return encodeDataRow(m.values);
    case 'CommandComplete':
      return w.cstring(m.tag).frame(code);
    case 'CopyInResponse':
    case 'CopyOutResponse':
    case 'CopyBothResponse':
      w.byte(m.format).int16(m.columnFormats.length);
      for (const f of m.columnFormats) w.int16(f);
      return w.frame(code);
    case 'CopyData':
      return w.bytes(m.data).frame(code);
    case 'CopyDone':
    case 'ParseComplete':
    case 'BindComplete':
    case 'CloseComplete':
    case 'NoData':
    case 'PortalSuspended':
    case 'EmptyQueryResponse':
      return w.frame(code);
    case 'ParameterDescription':
      w.int16(m.typeOids.length);
      for (const t of m.typeOids) w.int32(t);
      return w.frame(code);
    case 'NotificationResponse':
      return w.int32(m.processId).cstring(m.channel).cstring(m.payload).frame(code);
    case 'NegotiateProtocolVersion':
      w.int32(m.newestMinor).int32(m.unrecognized.length);
      for (const o of m.unrecognized) w.cstring(o);
      return w.frame(code);
    case 'FunctionCallResponse':
      return (m.value === null ? w.int32(-1) : w.int32(m.value.length).bytes(m.value)).frame(code);
  }
}

/** A DataRow in one allocation (the hot path of masking). */
export function encodeDataRow(values: ReadonlyArray<Buffer | null>): Buffer {
  let size = 4 + 2;
  for (const v of values) size += 4 + (v === null ? 0 : v.length);
  const out = Buffer.allocUnsafe(1 + size);
  out[0] = BACKEND_CODES.DataRow;
  out.writeInt32BE(size, 1);
  out.writeInt16BE(values.length, 5);
  let at = 7;
  for (const v of values) {
    if (v === null) {
      out.writeInt32BE(-1, at);
      at += 4;
    } else {
      out.writeInt32BE(v.length, at);
      v.copy(out, at + 4);
      at += 4 + v.length;
    }
  }
  return out;
}

/** ErrorResponse with the fields libpq shows: severity, SQLSTATE, message, and an optional hint. */
export function errorResponse(
  sqlstate: string,
  message: string,
  options: { severity?: 'ERROR' | 'FATAL'; hint?: string; detail?: string } = {},
): Buffer {
  const severity = options.severity ?? 'ERROR';
  const fields: Array<readonly [string, string]> = [
    ['S', severity],
    ['V', severity],
    ['C', sqlstate],
    ['M', message],
  ];
  if (options.detail !== undefined) fields.push(['D', options.detail]);
  if (options.hint !== undefined) fields.push(['H', options.hint]);
  return encodeBackend({ type: 'ErrorResponse', fields });
}

export function noticeResponse(sqlstate: string, message: string): Buffer {
  return encodeBackend({
    type: 'NoticeResponse',
    fields: [
      ['S', 'WARNING'],
      ['V', 'WARNING'],
      ['C', sqlstate],
      ['M', message],
    ],
  });
}

export const READY_IDLE = encodeBackend({ type: 'ReadyForQuery', status: 'I' });
