import { CoatcheckError } from '../../../core/errors.js';
import { describeCode, protocolError } from './framer.js';
import {
  type BackendMessage,
  CANCEL_REQUEST_CODE,
  type FieldDescription,
  type Frame,
  type FrontendMessage,
  GSSENC_REQUEST_CODE,
  type NoticeFields,
  SSL_REQUEST_CODE,
  type StartupPhaseMessage,
} from './messages.js';
import { BodyReader } from './reader.js';

/** Most startup parameters accepted (libpq sends about ten). */
const MAX_STARTUP_PARAMETERS = 64;

export function decodeStartup(frame: Frame): StartupPhaseMessage {
  const r = new BodyReader(frame.body, 'startup packet');
  const code = r.int32();
  switch (code) {
    case SSL_REQUEST_CODE:
      r.end();
      return { type: 'SSLRequest' };
    case GSSENC_REQUEST_CODE:
      r.end();
      return { type: 'GSSENCRequest' };
    case CANCEL_REQUEST_CODE: {
      const processId = r.int32();
      const secretKey = r.int32();
      r.end();
      return { type: 'CancelRequest', processId, secretKey };
    }
    default:
      break;
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) {
    throw new CoatcheckError(
      'CC_ERR_PG_UNSUPPORTED',
      `protocol version ${major}.${minor} is not supported; use 3.0`,
      { details: { major, minor } },
    );
  }
  const parameters: Array<readonly [string, string]> = [];
  for (;;) {
    const name = r.cstring();
    if (name === '') break;
    if (parameters.length >= MAX_STARTUP_PARAMETERS)
      throw protocolError('startup packet has too many parameters');
    parameters.push([name, r.cstring()]);
  }
  r.end();
  return { type: 'StartupMessage', major, minor, parameters };
}

function closeKind(r: BodyReader, what: string): 'S' | 'P' {
  const k = r.byte();
  if (k === 0x53) return 'S';
  if (k === 0x50) return 'P';
  throw protocolError(`${what} has kind ${describeCode(k)}; expected 'S' or 'P'`, { type: what });
}

/** Decode one frontend message (after the startup phase). Unknown types are a protocol error. */
export function decodeFrontend(frame: Frame): FrontendMessage {
  const { code, body } = frame;
  switch (code) {
    case 0x51: {
      const r = new BodyReader(body, 'Query');
      const sql = r.cstring();
      r.end();
      return { type: 'Query', sql };
    }
    case 0x50: {
      const r = new BodyReader(body, 'Parse');
      const name = r.cstring();
      const sql = r.cstring();
      const n = r.count16(4);
      const parameterTypes: number[] = [];
      for (let i = 0; i < n; i++) parameterTypes.push(r.int32() >>> 0);
      r.end();
      return { type: 'Parse', name, sql, parameterTypes };
    }
    case 0x42: {
      const r = new BodyReader(body, 'Bind');
      const portal = r.cstring();
      const statement = r.cstring();
      const nf = r.count16(2);
      const parameterFormats: number[] = [];
      for (let i = 0; i < nf; i++) parameterFormats.push(r.int16());
      const np = r.count16(4);
      const parameters: Array<Buffer | null> = [];
      for (let i = 0; i < np; i++) {
        const len = r.int32();
        if (len === -1) parameters.push(null);
        else if (len < -1) throw protocolError('Bind has a negative parameter length', { type: 'Bind' });
        else parameters.push(r.bytes(len));
      }
      const nr = r.count16(2);
      const resultFormats: number[] = [];
      for (let i = 0; i < nr; i++) resultFormats.push(r.int16());
      r.end();
      return { type: 'Bind', portal, statement, parameterFormats, parameters, resultFormats };
    }
    case 0x44: {
      const r = new BodyReader(body, 'Describe');
      const kind = closeKind(r, 'Describe');
      const name = r.cstring();
      r.end();
      return { type: 'Describe', kind, name };
    }
    case 0x45: {
      const r = new BodyReader(body, 'Execute');
      const portal = r.cstring();
      const maxRows = r.int32();
      r.end();
      return { type: 'Execute', portal, maxRows };
    }
    case 0x43: {
      const r = new BodyReader(body, 'Close');
      const kind = closeKind(r, 'Close');
      const name = r.cstring();
      r.end();
      return { type: 'Close', kind, name };
    }
    case 0x53:
      new BodyReader(body, 'Sync').end();
      return { type: 'Sync' };
    case 0x48:
      new BodyReader(body, 'Flush').end();
      return { type: 'Flush' };
    case 0x64:
      return { type: 'CopyData', data: body };
    case 0x63:
      new BodyReader(body, 'CopyDone').end();
      return { type: 'CopyDone' };
    case 0x66: {
      const r = new BodyReader(body, 'CopyFail');
      const message = r.cstring();
      r.end();
      return { type: 'CopyFail', message };
    }
    case 0x58:
      new BodyReader(body, 'Terminate').end();
      return { type: 'Terminate' };
    case 0x70:
      return { type: 'PasswordMessage', data: body };
    case 0x46:
      return { type: 'FunctionCall', data: body };
    default:
      throw protocolError(`unknown frontend message type ${describeCode(code)}`, {
        type: describeCode(code),
      });
  }
}

function noticeFields(r: BodyReader): NoticeFields {
  const fields: Array<readonly [string, string]> = [];
  for (;;) {
    const k = r.byte();
    if (k === 0) break;
    fields.push([String.fromCharCode(k), r.cstring()]);
  }
  r.end();
  return fields;
}

function copyResponse(
  type: 'CopyInResponse' | 'CopyOutResponse' | 'CopyBothResponse',
  body: Buffer,
): BackendMessage {
  const r = new BodyReader(body, type);
  const format = r.byte();
  const n = r.count16(2);
  const columnFormats: number[] = [];
  for (let i = 0; i < n; i++) columnFormats.push(r.int16());
  r.end();
  return { type, format, columnFormats };
}

function empty<T extends BackendMessage['type']>(type: T, body: Buffer): { type: T } {
  new BodyReader(body, type).end();
  return { type };
}

/** Decode a DataRow body: column values as views into the body (no copy). */
export function decodeDataRow(body: Buffer): Array<Buffer | null> {
  const r = new BodyReader(body, 'DataRow');
  const n = r.count16(4);
  const values: Array<Buffer | null> = new Array(n);
  for (let i = 0; i < n; i++) {
    const len = r.int32();
    if (len === -1) values[i] = null;
    else if (len < -1) throw protocolError('DataRow has a negative value length', { type: 'DataRow' });
    else values[i] = r.bytes(len);
  }
  r.end();
  return values;
}

/** Decode one backend message. Unknown types are a protocol error (the upstream is not PostgreSQL). */
export function decodeBackend(frame: Frame): BackendMessage {
  const { code, body } = frame;
  switch (code) {
    case 0x52: {
      const r = new BodyReader(body, 'Authentication');
      const authCode = r.int32();
      return { type: 'Authentication', code: authCode, data: r.rest() };
    }
    case 0x4b: {
      const r = new BodyReader(body, 'BackendKeyData');
      const processId = r.int32();
      const secretKey = r.int32();
      r.end();
      return { type: 'BackendKeyData', processId, secretKey };
    }
    case 0x53: {
      const r = new BodyReader(body, 'ParameterStatus');
      const name = r.cstring();
      const value = r.cstring();
      r.end();
      return { type: 'ParameterStatus', name, value };
    }
    case 0x5a: {
      const r = new BodyReader(body, 'ReadyForQuery');
      const s = String.fromCharCode(r.byte());
      r.end();
      if (s !== 'I' && s !== 'T' && s !== 'E') throw protocolError('ReadyForQuery has an unknown status');
      return { type: 'ReadyForQuery', status: s };
    }
    case 0x45:
      return { type: 'ErrorResponse', fields: noticeFields(new BodyReader(body, 'ErrorResponse')) };
    case 0x4e:
      return { type: 'NoticeResponse', fields: noticeFields(new BodyReader(body, 'NoticeResponse')) };
    case 0x54: {
      const r = new BodyReader(body, 'RowDescription');
      const n = r.count16(19);
      const fields: FieldDescription[] = [];
      for (let i = 0; i < n; i++) {
        fields.push({
          name: r.cstring(),
          tableOid: r.int32() >>> 0,
          columnAttr: r.int16(),
          typeOid: r.int32() >>> 0,
          typeSize: r.int16(),
          typeModifier: r.int32(),
          format: r.int16(),
        });
      }
      r.end();
      return { type: 'RowDescription', fields };
    }
    case 0x44:
      return { type: 'DataRow', values: decodeDataRow(body) };
    case 0x43: {
      const r = new BodyReader(body, 'CommandComplete');
      const tag = r.cstring();
      r.end();
      return { type: 'CommandComplete', tag };
    }
    case 0x47:
      return copyResponse('CopyInResponse', body);
    case 0x48:
      return copyResponse('CopyOutResponse', body);
    case 0x57:
      return copyResponse('CopyBothResponse', body);
    case 0x64:
      return { type: 'CopyData', data: body };
    case 0x63:
      return empty('CopyDone', body);
    case 0x31:
      return empty('ParseComplete', body);
    case 0x32:
      return empty('BindComplete', body);
    case 0x33:
      return empty('CloseComplete', body);
    case 0x6e:
      return empty('NoData', body);
    case 0x73:
      return empty('PortalSuspended', body);
    case 0x49:
      return empty('EmptyQueryResponse', body);
    case 0x74: {
      const r = new BodyReader(body, 'ParameterDescription');
      const n = r.count16(4);
      const typeOids: number[] = [];
      for (let i = 0; i < n; i++) typeOids.push(r.int32() >>> 0);
      r.end();
      return { type: 'ParameterDescription', typeOids };
    }
    case 0x41: {
      const r = new BodyReader(body, 'NotificationResponse');
      const processId = r.int32();
      const channel = r.cstring();
      const payload = r.cstring();
      r.end();
      return { type: 'NotificationResponse', processId, channel, payload };
    }
    case 0x76: {
      const r = new BodyReader(body, 'NegotiateProtocolVersion');
      const newestMinor = r.int32();
      const n = r.int32();
      if (n < 0 || n > r.remaining) throw protocolError('NegotiateProtocolVersion has a bad option count');
      const unrecognized: string[] = [];
      for (let i = 0; i < n; i++) unrecognized.push(r.cstring());
      r.end();
      return { type: 'NegotiateProtocolVersion', newestMinor, unrecognized };
    }
    case 0x56: {
      const r = new BodyReader(body, 'FunctionCallResponse');
      const len = r.int32();
      const value = len === -1 ? null : r.bytes(len);
      r.end();
      return { type: 'FunctionCallResponse', value };
    }
    default:
      throw protocolError(`unknown backend message type ${describeCode(code)}`, { type: describeCode(code) });
  }
}
