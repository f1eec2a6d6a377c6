import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../../core/errors.js';
import { decodeBackend, decodeFrontend, decodeStartup } from './decode.js';
import { encodeBackend, encodeFrontend, encodeStartup } from './encode.js';
import { MAX_STARTUP_BYTES, MessageFramer } from './framer.js';
import type { BackendMessage, Frame, FrontendMessage, StartupPhaseMessage } from './messages.js';

const text = fc.string({ unit: 'grapheme', maxLength: 40 }).map((s) => s.replaceAll('\0', ''));
const int32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });
const uint32 = fc.integer({ min: 0, max: 2 ** 32 - 1 });
const int16 = fc.integer({ min: -(2 ** 15), max: 2 ** 15 - 1 });
const bytes = fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a));
const kind = fc.constantFrom<'S' | 'P'>('S', 'P');

const frontend: fc.Arbitrary<FrontendMessage> = fc.oneof(
  text.map((sql) => ({ type: 'Query' as const, sql })),
  fc.record({
    type: fc.constant('Parse' as const),
    name: text,
    sql: text,
    parameterTypes: fc.array(uint32, { maxLength: 5 }),
  }),
  fc.record({
    type: fc.constant('Bind' as const),
    portal: text,
    statement: text,
    parameterFormats: fc.array(int16, { maxLength: 4 }),
    parameters: fc.array(fc.option(bytes, { nil: null }), { maxLength: 5 }),
    resultFormats: fc.array(int16, { maxLength: 4 }),
  }),
  fc.record({ type: fc.constant('Describe' as const), kind, name: text }),
  fc.record({ type: fc.constant('Close' as const), kind, name: text }),
  fc.record({ type: fc.constant('Execute' as const), portal: text, maxRows: int32 }),
  fc.constantFrom(
    { type: 'Sync' as const },
    { type: 'Flush' as const },
    { type: 'CopyDone' as const },
    { type: 'Terminate' as const },
  ),
  bytes.map((data) => ({ type: 'CopyData' as const, data })),
  text.map((message) => ({ type: 'CopyFail' as const, message })),
  bytes.map((data) => ({ type: 'PasswordMessage' as const, data })),
);

const notice = fc.array(
  fc.tuple(
    fc.constantFrom('S', 'V', 'C', 'M', 'D', 'H', 'P'),
    text.map((s) => s),
  ),
  { maxLength: 6 },
);

const backend: fc.Arbitrary<BackendMessage> = fc.oneof(
  fc.record({ type: fc.constant('Authentication' as const), code: int32, data: bytes }),
  fc.record({ type: fc.constant('BackendKeyData' as const), processId: int32, secretKey: int32 }),
  fc.record({ type: fc.constant('ParameterStatus' as const), name: text, value: text }),
  fc.record({ type: fc.constant('ReadyForQuery' as const), status: fc.constantFrom('I', 'T', 'E') }),
  fc.record({ type: fc.constantFrom('ErrorResponse' as const, 'NoticeResponse' as const), fields: notice }),
  fc.record({
    type: fc.constant('RowDescription' as const),
    fields: fc.array(
      fc.record({
        name: text,
        tableOid: uint32,
        columnAttr: int16,
        typeOid: uint32,
        typeSize: int16,
        typeModifier: int32,
        format: int16,
      }),
      { maxLength: 5 },
    ),
  }),
  fc.record({
    type: fc.constant('DataRow' as const),
    values: fc.array(fc.option(bytes, { nil: null }), { maxLength: 6 }),
  }),
  fc.record({ type: fc.constant('CommandComplete' as const), tag: text }),
  fc.record({
    type: fc.constantFrom('CopyInResponse' as const, 'CopyOutResponse' as const, 'CopyBothResponse' as const),
    format: fc.integer({ min: 0, max: 1 }),
    columnFormats: fc.array(int16, { maxLength: 4 }),
  }),
  bytes.map((data) => ({ type: 'CopyData' as const, data })),
  fc
    .constantFrom(
      'CopyDone' as const,
      'ParseComplete' as const,
      'BindComplete' as const,
      'CloseComplete' as const,
      'NoData' as const,
      'PortalSuspended' as const,
      'EmptyQueryResponse' as const,
    )
    .map((type) => ({ type }) as BackendMessage),
  fc.record({
    type: fc.constant('ParameterDescription' as const),
    typeOids: fc.array(uint32, { maxLength: 5 }),
  }),
  fc.record({
    type: fc.constant('NotificationResponse' as const),
    processId: int32,
    channel: text,
    payload: text,
  }),
  fc.record({
    type: fc.constant('NegotiateProtocolVersion' as const),
    newestMinor: fc.integer({ min: 0, max: 5 }),
    unrecognized: fc.array(text, { maxLength: 3 }),
  }),
  fc.record({ type: fc.constant('FunctionCallResponse' as const), value: fc.option(bytes, { nil: null }) }),
);

const startup: fc.Arbitrary<StartupPhaseMessage> = fc.oneof(
  fc.constant({ type: 'SSLRequest' as const }),
  fc.constant({ type: 'GSSENCRequest' as const }),
  fc.record({ type: fc.constant('CancelRequest' as const), processId: int32, secretKey: int32 }),
  fc.record({
    type: fc.constant('StartupMessage' as const),
    major: fc.constant(3),
    minor: fc.integer({ min: 0, max: 2 }),
    parameters: fc.array(
      fc.tuple(
        text.filter((s) => s !== ''),
        text,
      ),
      { maxLength: 8 },
    ),
  }),
);

/** Normalise Buffers to plain arrays so equality ignores views and pools. */
function plain(value: unknown): unknown {
  return JSON.parse(
    JSON.stringify(value, (_k, v) =>
      v && v.type === 'Buffer' && Array.isArray(v.data) ? { bytes: v.data } : v,
    ),
  );
}

function frames(framer: MessageFramer): Frame[] {
  const out: Frame[] = [];
  for (let f = framer.next(); f !== null; f = framer.next()) out.push(f);
  return out;
}

/** Split `input` at the given (sorted, deduplicated) cut points. */
function split(input: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (input.length + 1)))].sort((a, b) => a - b);
  const parts: Buffer[] = [];
  let last = 0;
  for (const p of points) {
    parts.push(input.subarray(last, p));
    last = p;
  }
  parts.push(input.subarray(last));
  return parts;
}

function isPgError(error: unknown): boolean {
  return (
    error instanceof CoatcheckError &&
    ['CC_ERR_PG_PROTOCOL', 'CC_ERR_PG_MESSAGE_TOO_LARGE', 'CC_ERR_PG_UNSUPPORTED'].includes(error.code)
  );
}

describe('postgres codec', () => {
  it('round-trips every frontend message', () => {
    fc.assert(
      fc.property(frontend, (m) => {
        const framer = new MessageFramer({ startup: false });
        framer.push(encodeFrontend(m));
        const [frame, ...rest] = frames(framer);
        expect(rest).toHaveLength(0);
        expect(plain(decodeFrontend(frame!))).toEqual(plain(m));
      }),
    );
  });

  it('round-trips every backend message', () => {
    fc.assert(
      fc.property(backend, (m) => {
        const framer = new MessageFramer({ startup: false });
        framer.push(encodeBackend(m));
        const [frame, ...rest] = frames(framer);
        expect(rest).toHaveLength(0);
        expect(plain(decodeBackend(frame!))).toEqual(plain(m));
      }),
    );
  });

  it('round-trips every startup-phase message', () => {
    fc.assert(
      fc.property(startup, (m) => {
        const framer = new MessageFramer({ startup: true });
        framer.push(encodeStartup(m));
        const [frame, ...rest] = frames(framer);
        expect(rest).toHaveLength(0);
        expect(plain(decodeStartup(frame!))).toEqual(plain(m));
      }),
    );
  });

  it('gives the same messages for any split of the input', () => {
    fc.assert(
      fc.property(
        fc.array(frontend, { minLength: 1, maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (messages, cuts) => {
          const input = Buffer.concat(messages.map(encodeFrontend));
          const framer = new MessageFramer({ startup: false });
          const got: FrontendMessage[] = [];
          for (const part of split(input, cuts)) {
            framer.push(part);
            for (const f of frames(framer)) got.push(decodeFrontend(f));
          }
          expect(framer.pending).toBe(0);
          expect(plain(got)).toEqual(plain(messages));
        },
      ),
    );
  });

  it('gives the same backend messages split at every single position', () => {
    const input = Buffer.concat(
      [
        { type: 'RowDescription', fields: [] },
        { type: 'DataRow', values: [Buffer.from('a'), null] },
        { type: 'CommandComplete', tag: 'SELECT 1' },
        { type: 'ReadyForQuery', status: 'I' },
      ].map((m) => encodeBackend(m as BackendMessage)),
    );
    for (let at = 0; at <= input.length; at++) {
      const framer = new MessageFramer({ startup: false });
      framer.push(input.subarray(0, at));
      const got = frames(framer);
      framer.push(input.subarray(at));
      got.push(...frames(framer));
      expect(got.map((f) => decodeBackend(f).type)).toEqual([
        'RowDescription',
        'DataRow',
        'CommandComplete',
        'ReadyForQuery',
      ]);
    }
  });

  it('turns garbage into protocol errors only', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 200 }),
        fc.boolean(),
        fc.boolean(),
        (data, asStartup, asBackend) => {
          const framer = new MessageFramer({ startup: asStartup, maxMessageBytes: 4096 });
          framer.push(Buffer.from(data));
          try {
            for (const f of frames(framer)) {
              if (asStartup) decodeStartup(f);
              else if (asBackend) decodeBackend(f);
              else decodeFrontend(f);
            }
          } catch (error) {
            if (!isPgError(error)) throw error;
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('refuses a typed message over the limit from its header alone, before the body arrives', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1025, max: 2 ** 31 - 1 }),
        fc.integer({ min: 0, max: 255 }),
        (length, code) => {
          const framer = new MessageFramer({ startup: false, maxMessageBytes: 1024 });
          const header = Buffer.alloc(5);
          header[0] = code;
          header.writeInt32BE(length, 1);
          framer.push(header);
          expect(() => framer.next()).toThrowError(
            expect.objectContaining({ code: 'CC_ERR_PG_MESSAGE_TOO_LARGE' }) as Error,
          );
        },
      ),
    );
  });

  it('refuses lengths below the header size and negative lengths', () => {
    for (const length of [-1, 0, 3, -(2 ** 31)]) {
      const framer = new MessageFramer({ startup: false });
      const header = Buffer.alloc(5);
      header[0] = 0x51;
      header.writeInt32BE(length, 1);
      framer.push(header);
      expect(() => framer.next()).toThrowError(
        expect.objectContaining({ code: 'CC_ERR_PG_PROTOCOL' }) as Error,
      );
    }
  });

  it('refuses a startup packet over 10 KiB and one below 8 bytes', () => {
    const big = Buffer.alloc(4);
    big.writeInt32BE(MAX_STARTUP_BYTES + 1);
    const f1 = new MessageFramer({ startup: true });
    f1.push(big);
    expect(() => f1.next()).toThrowError(
      expect.objectContaining({ code: 'CC_ERR_PG_MESSAGE_TOO_LARGE' }) as Error,
    );
    const small = Buffer.alloc(4);
    small.writeInt32BE(7);
    const f2 = new MessageFramer({ startup: true });
    f2.push(small);
    expect(() => f2.next()).toThrowError(expect.objectContaining({ code: 'CC_ERR_PG_PROTOCOL' }) as Error);
  });

  it('refuses protocol version 2 as unsupported', () => {
    const framer = new MessageFramer({ startup: true });
    const m = Buffer.alloc(8);
    m.writeInt32BE(8);
    m.writeInt32BE(2 << 16, 4);
    framer.push(m);
    expect(() => decodeStartup(framer.next()!)).toThrowError(
      expect.objectContaining({ code: 'CC_ERR_PG_UNSUPPORTED' }) as Error,
    );
  });

  it('refuses a Bind whose parameter count cannot fit in the message', () => {
    const body = Buffer.concat([Buffer.from('\0\0'), Buffer.from([0, 0]), Buffer.from([0x7f, 0xff])]);
    const frame = { code: 0x42, body, raw: body };
    expect(() => decodeFrontend(frame)).toThrowError(
      expect.objectContaining({ code: 'CC_ERR_PG_PROTOCOL' }) as Error,
    );
  });
});

describe('framer limits and watch', () => {
  it('applies a lowered limit before login and the raised one after', () => {
    const f = new MessageFramer({ startup: false, maxMessageBytes: 8 * 1024 });
    f.push(encodeFrontend({ type: 'Query', sql: 'x'.repeat(8 * 1024) }));
    expect(() => f.next()).toThrowError(
      expect.objectContaining({ code: 'CC_ERR_PG_MESSAGE_TOO_LARGE' }) as Error,
    );
    const g = new MessageFramer({ startup: false, maxMessageBytes: 8 * 1024 });
    g.maxMessageBytes = 64 * 1024;
    g.push(encodeFrontend({ type: 'Query', sql: 'x'.repeat(8 * 1024) }));
    expect(g.next()?.code).toBe(0x51);
  });

  it('shows every frame to the watch before returning it; a throw refuses the frame', () => {
    const f = new MessageFramer({ startup: false });
    const seen: number[] = [];
    f.watch = (frame) => {
      seen.push(frame.code);
      if (frame.code === 0x50) throw new CoatcheckError('CC_ERR_PG_TEXT_INVALID', 'no');
    };
    f.push(
      Buffer.concat([
        encodeFrontend({ type: 'Query', sql: 'SELECT 1' }),
        encodeFrontend({ type: 'Parse', name: '', sql: 'SELECT 2', parameterTypes: [] }),
        encodeFrontend({ type: 'Sync' }),
      ]),
    );
    expect(f.next()?.code).toBe(0x51);
    expect(() => f.next()).toThrowError(expect.objectContaining({ code: 'CC_ERR_PG_TEXT_INVALID' }) as Error);
    expect(f.next()?.code).toBe(0x53);
    expect(seen).toEqual([0x51, 0x50, 0x53]);
  });
});
