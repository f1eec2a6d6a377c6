import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../core/errors.js';
import type { ResponseScan } from '../../gateway/inspector.js';
import { BackendInspector, createOutputIndex, withheldNotice } from './backend-inspect.js';
import { MessageFramer } from './protocol/framer.js';
import type { Frame } from './protocol/messages.js';

const SECRET = 'unit-canary-Xq81Lm';

function frame(code: number, body: Buffer): Frame {
  const raw = Buffer.allocUnsafe(5 + body.length);
  raw[0] = code;
  raw.writeInt32BE(body.length + 4, 1);
  body.copy(raw, 5);
  return { code, body, raw };
}

/** A scan that replaces the one secret by a fixed placeholder ticket (codec tests only). */
const scan: ResponseScan = {
  findings: new Map(),
  async header(v) {
    return v.split(SECRET).join('cct_0000000000000000000000000000');
  },
  async push(c) {
    return c;
  },
  async end() {
    return Buffer.alloc(0);
  },
};

const index = createOutputIndex([{ id: 'sec_1', value: Buffer.from(SECRET) }]);
const inspector = () =>
  new BackendInspector(
    () => index,
    async () => scan,
  );

const CODES = [0x44, 0x54, 0x45, 0x4e, 0x53, 0x41, 0x64, 0x56];

describe('BackendInspector codec', () => {
  it('garbage bodies holding a secret give a rewritten, well-framed message or a protocol error, never a crash', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...CODES),
        fc.uint8Array({ maxLength: 64 }),
        fc.uint8Array({ maxLength: 64 }),
        async (code, a, b) => {
          const body = Buffer.concat([Buffer.from(a), Buffer.from(SECRET), Buffer.from(b)]);
          try {
            const out = await inspector().inspect(frame(code, body));
            const framer = new MessageFramer({ startup: false, maxMessageBytes: 1 << 20 });
            framer.push(out);
            expect(framer.next()?.code).toBe(code);
            expect(framer.next()).toBeNull();
          } catch (error) {
            expect(error).toBeInstanceOf(CoatcheckError);
            expect((error as CoatcheckError).code).toBe('CC_ERR_PG_PROTOCOL');
          }
        },
      ),
      { numRuns: 400 },
    );
  });

  it('binary COPY: the header is read once, tuples keep valid lengths, a short tuple is a protocol error', async () => {
    const i = inspector();
    await i.inspect(frame(0x48, Buffer.from([1, 0, 1, 0, 1])));
    const header = Buffer.concat([Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), Buffer.alloc(8)]);
    const field = Buffer.from(`x${SECRET}y`);
    const tuple = Buffer.alloc(2 + 4 + field.length);
    tuple.writeInt16BE(1, 0);
    tuple.writeInt32BE(field.length, 2);
    field.copy(tuple, 6);
    const out = (await i.inspect(frame(0x64, Buffer.concat([header, tuple])))) as Buffer;
    const body = out.subarray(5 + header.length);
    expect(body.readInt16BE(0)).toBe(1);
    const len = body.readInt32BE(2);
    expect(body.subarray(6, 6 + len).toString()).toBe('xcct_0000000000000000000000000000y');
    expect(6 + len).toBe(body.length);
    // The second message has no header; a truncated tuple is refused.
    await expect(
      (async () => i.inspect(frame(0x64, tuple.subarray(0, tuple.length - 1))))(),
    ).rejects.toMatchObject({
      code: 'CC_ERR_PG_PROTOCOL',
    });
  });

  it('the fast path sees 6- and 7-byte secrets, raw and base64', () => {
    const short = createOutputIndex([{ id: 'sec_s', value: Buffer.from('Zq7#pW') }]);
    expect(short.candidate(Buffer.from('a Zq7#pW b'))).toBe(true);
    expect(short.candidate(Buffer.from(`x ${Buffer.from('Zq7#pW').toString('base64')} y`))).toBe(true);
    expect(short.candidate(Buffer.from(`x ${Buffer.from('Zq7#pW').toString('hex')} y`))).toBe(true);
    expect(short.candidate(Buffer.from('nothing to see here'))).toBe(false);
  });

  it('withheldNotice drops every field but severity and SQLSTATE, and refuses odd values', () => {
    const body = Buffer.from(`SERROR\0VERROR\0C22P02\0M${SECRET}\0D${SECRET}\0t${SECRET}\0\0`, 'latin1');
    const out = withheldNotice(frame(0x45, body));
    expect(out.toString('latin1')).not.toContain(SECRET);
    const odd = withheldNotice(frame(0x4e, Buffer.from(`S${SECRET}\0C${SECRET}\0\0`, 'latin1')));
    expect(odd.toString('latin1')).not.toContain(SECRET);
    expect(odd.toString('latin1')).toContain('CXX000');
  });
});
