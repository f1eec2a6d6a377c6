import type { Socket } from 'node:net';

/**
 * Tune a TCP socket that ssh2 speaks SSH on (the client's, and the upstream's) for bulk
 * transfer:
 *
 * - `TCP_NODELAY`: ssh2 writes each packet in several pieces (length, body, MAC tag), so
 *   with Nagle's algorithm the later pieces wait for the peer's delayed ACK (up to 40 ms on
 *   Linux) whenever the connection is otherwise quiet: every request/response turn of an
 *   sftp or git session paid it.
 * - Writes are coalesced: everything ssh2 writes in one tick of the event loop leaves in
 *   one `writev` when the tick ends (the socket is corked at the first write and uncorked
 *   on `process.nextTick`), instead of one system call and one TCP segment per piece.
 *   ssh2 does not look at `write()`'s return value (its flow control is the SSH channel
 *   window), so what one tick holds is bounded by those windows; `end()` flushes what is
 *   held.
 */
export function tuneSshSocket(socket: Socket): void {
  socket.setNoDelay(true);
  const write = socket.write;
  let corked = false;
  const flush = () => {
    corked = false;
    socket.uncork();
  };
  socket.write = function (this: Socket, ...args: Parameters<Socket['write']>) {
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(flush);
    }
    return write.apply(this, args);
  } as Socket['write'];
}
