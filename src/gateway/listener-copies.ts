import { spawn } from 'node:child_process';
import cluster from 'node:cluster';
import { Server } from 'node:net';

/**
 * The helper's code (`node -e`, so the bundled CLI needs no file beside it): it receives a
 * listening socket's raw handle and sends it back `copies` times. Each handle that crosses
 * the IPC channel arrives as a new descriptor for the same socket. The helper never listens
 * on it, so it never accepts a connection.
 */
const HELPER_SOURCE = `
process.on('message', (message, handle) => {
  if (!message || typeof message.copies !== 'number' || !handle) return;
  let sent = 0;
  const next = (error) => {
    if (error || sent === message.copies) {
      handle.close();
      process.disconnect();
      return;
    }
    sent += 1;
    process.send({ copy: sent }, handle, next);
  };
  next();
});
`;

/**
 * More descriptors for one listening socket, each listened on in this process (ADR 0034).
 *
 * libuv (1.45 and later; Node 20 has 1.46) accepts one connection per listener per turn
 * of the event loop. Under load a turn takes tens of milliseconds, so a burst of new
 * connections waits in the kernel's accept queue, the last of 200 for seconds, while the
 * connections already accepted are served. Every copy is polled on its own: with `count`
 * copies a turn accepts up to `count + 1` connections. Connections a copy accepts are
 * handed to `server` through its 'connection' event, as if it had accepted them.
 *
 * An optimization only: in a cluster worker (whose listener is the primary's), when the
 * server has no handle, or when the helper fails or does not answer within `timeoutMs`,
 * it resolves with fewer copies or none, and the server accepts alone as before. The
 * copies close when the server does (a copy left open would keep the port bound).
 */
export async function listenerCopies(server: Server, count: number, timeoutMs = 5_000): Promise<Server[]> {
  const handle = (server as unknown as { _handle?: object | null })._handle;
  if (count <= 0 || cluster.isWorker || handle === undefined || handle === null) return [];
  const helper = spawn(process.execPath, ['-e', HELPER_SOURCE], {
    stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    // No NODE_OPTIONS or loaders: the helper is plain JavaScript.
    env: {},
  });
  const handles: object[] = [];
  await new Promise<void>((resolve) => {
    const timer = setTimeout(finish, timeoutMs);
    function finish() {
      clearTimeout(timer);
      helper.off('message', received);
      // A copy that arrives after this (the helper late past the timeout) is closed: an open
      // descriptor nobody polls would keep the port bound after the server closes.
      helper.on('message', (_message: unknown, late: unknown) =>
        (late as { close?(): void } | undefined)?.close?.(),
      );
      if (helper.exitCode === null && helper.signalCode === null) helper.kill();
      resolve();
    }
    function received(_message: unknown, copy: unknown) {
      if (copy !== undefined && copy !== null) handles.push(copy as object);
      if (handles.length === count) finish();
    }
    helper.on('message', received);
    helper.once('error', finish);
    helper.once('exit', finish);
    helper.send({ copies: count }, handle as Parameters<typeof helper.send>[1], (error) => {
      if (error) finish();
    });
  });
  if (!server.listening) {
    // The server closed while the copies were made: they must not keep the port.
    for (const copy of handles) (copy as { close(): void }).close();
    return [];
  }
  const copies = handles.map((copy) => {
    const listener = new Server({ pauseOnConnect: false });
    listener.on('connection', (socket) => server.emit('connection', socket));
    // An accept error on a copy (too many open files) loses nothing: the connection stays
    // queued for the server's own descriptor, which reports it as it always has.
    listener.on('error', () => undefined);
    listener.listen(copy);
    return listener;
  });
  // However the server is closed, its copies go with it: one left listening would keep the
  // port bound and take connections for a server that no longer serves.
  server.once('close', () => {
    for (const listener of copies) if (listener.listening) listener.close();
  });
  return copies;
}
