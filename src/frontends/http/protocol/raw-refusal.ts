import type { Duplex } from 'node:stream';
import { type CoatcheckError, ERROR_CODES } from '../../../core/errors.js';

/**
 * Answer on a raw socket, before any request is parsed (a listener at its connection limit):
 * the same JSON error body and `x-coatcheck-error` header as every HTTP refusal, then close.
 */
export function refuseRawHttp(socket: Duplex, error: CoatcheckError): void {
  socket.on('error', () => socket.destroy());
  const status = ERROR_CODES[error.code].status;
  const body = JSON.stringify({ error: { code: error.code, message: error.message } });
  socket.end(
    `HTTP/1.1 ${status} ${status === 503 ? 'Service Unavailable' : 'Error'}\r\ncontent-type: application/json\r\nx-coatcheck-error: ${error.code}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}
