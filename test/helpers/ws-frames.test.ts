import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../src/core/errors.js';
import { createFrameParser, encodeFrame, type WsFrame } from './ws-frames.js';

const frameArb = fc.record({
  fin: fc.boolean(),
  rsv: fc.constant(0),
  opcode: fc.constantFrom(0, 1, 2, 8, 9, 10),
  payload: fc.uint8Array({ maxLength: 70_000 }).map((a) => Buffer.from(a)),
});

function mask(frame: WsFrame, key: Buffer): Buffer {
  const plain = encodeFrame(frame);
  const headLength = plain.length - frame.payload.length;
  const head = Buffer.from(plain.subarray(0, headLength));
  head[1] = head[1]! | 0x80;
  const body = Buffer.from(frame.payload.map((b, i) => b ^ key[i % 4]!));
  return Buffer.concat([head, key, body]);
}

describe('WebSocket frames', () => {
  it('round trip: encode then parse gives the same frames', () => {
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 4 }), (frames) => {
        const bytes = Buffer.concat(frames.map(encodeFrame));
        expect(createFrameParser().push(bytes)).toEqual(frames);
      }),
      { numRuns: 50 },
    );
  });

  it('every split of the input gives the same frames, masked or not', () => {
    const frames: WsFrame[] = [
      { fin: true, rsv: 0, opcode: 1, payload: Buffer.from('hello') },
      { fin: false, rsv: 0, opcode: 2, payload: Buffer.alloc(300, 7) },
      { fin: true, rsv: 0, opcode: 0, payload: Buffer.alloc(0) },
    ];
    for (const bytes of [
      Buffer.concat(frames.map(encodeFrame)),
      Buffer.concat(frames.map((f) => mask(f, Buffer.from([1, 2, 3, 4])))),
    ]) {
      for (let cut = 0; cut <= bytes.length; cut++) {
        const parser = createFrameParser();
        const got = [...parser.push(bytes.subarray(0, cut)), ...parser.push(bytes.subarray(cut))];
        expect(got).toEqual(frames);
      }
    }
  });

  it('refuses an oversize length before buffering it', () => {
    const parser = createFrameParser(1024);
    expect(() => parser.push(Buffer.from([0x82, 126, 0x10, 0x00]))).toThrow(CoatcheckError);
    expect(() => createFrameParser().push(Buffer.from([0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0]))).toThrow(
      expect.objectContaining({ code: 'CC_ERR_GATEWAY_UPSTREAM_ENCODING' }),
    );
  });

  it('garbage gives frames or a CoatcheckError, never anything else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        try {
          createFrameParser(64).push(Buffer.from(bytes));
        } catch (error) {
          expect(error).toBeInstanceOf(CoatcheckError);
        }
      }),
    );
  });
});
