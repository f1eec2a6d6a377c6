import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { CoatcheckError } from '../../../core/errors.js';

/**
 * A refusal written on a raw socket, where no ServerResponse exists (a CONNECT, an upgrade, a
 * listener at its connection limit): the same JSON body and `x-coatcheck-error` header as
 * every HTTP refusal, then the connection closes. `extraHeaders` are complete header lines.
 */
export function refuseRawHttp(
  socket: Duplex,
  error: CoatcheckError,
  extraHeaders: readonly string[] = [],
): void {
  socket.on('error', () => socket.destroy());
  const body = JSON.stringify({ error: { code: error.code, message: error.message } });
  socket.end(
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? 'Error'}\r\ncontent-type: application/json; charset=utf-8\r\nx-coatcheck-error: ${error.code}\r\n${extraHeaders.map((h) => `${h}\r\n`).join('')}content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}
