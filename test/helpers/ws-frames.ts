import { CoatcheckError } from '../../src/core/errors.js';

/**
 * WebSocket frames (RFC 6455 §5.2) for tests that must see or craft every frame (a hostile
 * upstream splitting a secret across continuation frames, a raw client that sees control
 * frames). The gateway itself speaks WebSocket through the `ws` library
 * (src/gateway/websocket.ts); this independent codec checks it from outside. Pure: bytes
 * in, frames out; frames in, bytes out. Lengths are bounded before anything is buffered.
 */
export interface WsFrame {
  readonly fin: boolean;
  /** RSV1-3 as the top bits of the first byte (0 when no extension is negotiated). */
  readonly rsv: number;
  readonly opcode: number;
  /** Unmasked payload. */
  readonly payload: Buffer;
}

export const MAX_WS_FRAME = 16 * 1024 * 1024;

function bad(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_GATEWAY_UPSTREAM_ENCODING', message);
}

/** An incremental parser: feed it chunks in any split, get whole frames in order. */
export function createFrameParser(max = MAX_WS_FRAME): { push(chunk: Buffer): WsFrame[] } {
  let buffer: Buffer = Buffer.alloc(0);
  return {
    push(chunk) {
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
      const frames: WsFrame[] = [];
      for (;;) {
        if (buffer.length < 2) break;
        const b0 = buffer[0]!;
        const b1 = buffer[1]!;
        let offset = 2;
        let length = b1 & 0x7f;
        if (length === 126) {
          if (buffer.length < 4) break;
          length = buffer.readUInt16BE(2);
          offset = 4;
        } else if (length === 127) {
          if (buffer.length < 10) break;
          const high = buffer.readUInt32BE(2);
          const low = buffer.readUInt32BE(6);
          if (high !== 0 || low > max) throw bad(`a WebSocket frame is longer than ${max} bytes`);
          length = low;
          offset = 10;
        }
        if (length > max) throw bad(`a WebSocket frame is longer than ${max} bytes`);
        const masked = (b1 & 0x80) !== 0;
        const maskAt = offset;
        if (masked) offset += 4;
        if (buffer.length < offset + length) break;
        let payload = Buffer.from(buffer.subarray(offset, offset + length));
        if (masked) {
          const mask = buffer.subarray(maskAt, maskAt + 4);
          payload = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!));
        }
        frames.push({ fin: (b0 & 0x80) !== 0, rsv: b0 & 0x70, opcode: b0 & 0x0f, payload });
        buffer = buffer.subarray(offset + length);
      }
      return frames;
    },
  };
}

/** An unmasked frame, as a server sends it. */
export function encodeFrame(frame: WsFrame): Buffer {
  const length = frame.payload.length;
  const head =
    length < 126
      ? Buffer.from([0, length])
      : length < 65536
        ? Buffer.from([0, 126, length >> 8, length & 0xff])
        : Buffer.concat([
            Buffer.from([0, 127, 0, 0, 0, 0]),
            Buffer.from([length >>> 24, (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff]),
          ]);
  head[0] = (frame.fin ? 0x80 : 0) | frame.rsv | frame.opcode;
  return Buffer.concat([head, frame.payload]);
}

/** Largest message reassembled from continuation frames (refused beyond). */
export const MAX_WS_MESSAGE = 16 * 1024 * 1024;

export type WsUnit =
  | { readonly kind: 'control'; readonly frame: WsFrame }
  | { readonly kind: 'message'; readonly opcode: number; readonly payload: Buffer };

/**
 * Reassembles fragmented messages (RFC 6455 §5.4): a text or binary frame without FIN
 * and its continuation frames become one message, so a secret split across fragments is
 * seen whole. Control frames (which may come between fragments) pass one by one. No
 * extension is negotiated by the gateway, so any RSV bit is a protocol error.
 */
export function createMessageAssembler(max = MAX_WS_MESSAGE): { push(frame: WsFrame): WsUnit | null } {
  let opcode = -1;
  let parts: Buffer[] = [];
  let size = 0;
  return {
    push(frame) {
      if (frame.rsv !== 0) throw bad('a WebSocket frame sets a reserved bit no extension was negotiated for');
      if (frame.opcode >= 8) {
        if (!frame.fin || frame.payload.length > 125)
          throw bad('a WebSocket control frame is fragmented or too long');
        return { kind: 'control', frame };
      }
      if (frame.opcode === 0) {
        if (opcode === -1) throw bad('a WebSocket continuation frame starts no message');
      } else {
        if (opcode !== -1) throw bad('a WebSocket message started before the previous one ended');
        if (frame.opcode !== 1 && frame.opcode !== 2) throw bad('a WebSocket frame has an unknown opcode');
        opcode = frame.opcode;
      }
      size += frame.payload.length;
      if (size > max) throw bad(`a WebSocket message is longer than ${max} bytes`);
      parts.push(frame.payload);
      if (!frame.fin) return null;
      const message: WsUnit = {
        kind: 'message',
        opcode,
        payload: parts.length === 1 ? parts[0]! : Buffer.concat(parts, size),
      };
      opcode = -1;
      parts = [];
      size = 0;
      return message;
    },
  };
}
