import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { resolveHome } from '../../../src/config/home.js';
import { type Frontend, GatewayDriver } from '../../../src/gateway/driver.js';
import { listenerCopies } from '../../../src/gateway/listener-copies.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';

// A busy gateway accepts one connection per listening descriptor per turn of its event
// loop (libuv 1.45 and later); the driver polls copies of each listener so that a burst of
// new connections is not queued behind the work of the ones already accepted (ADR 0034).

let dir: string;
let ctx: Context;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coatcheck-listener-copies-'));
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env: {} });
  ctx = await openContext(home, { env: {} });
});

afterAll(async () => {
  await ctx.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A front-end that answers "ok" on every connection and notes which listener accepted it. */
function echoFrontend(
  accepted: Array<Server | undefined>,
  maxConnections?: number,
): Frontend<{ port: number }> {
  return {
    name: 'copies-probe',
    async start(mount) {
      const server = createServer((socket: Socket) => {
        accepted.push((socket as Socket & { server?: Server }).server);
        socket.end('ok');
      });
      const address = await mount.listen(
        server,
        { host: '127.0.0.1', port: 0 },
        maxConnections === undefined ? {} : { maxConnections },
      );
      return { port: address.port };
    },
  };
}

function driverWith(listenerCopies: number) {
  return new GatewayDriver({
    registry: ctx.metrics,
    log: ctx.log,
    store: ctx.store,
    clock: ctx.clock,
    listenerCopies,
  });
}

/** Open `count` connections at once; resolves with what each read before it closed. */
function burst(port: number, count: number): Promise<string[]> {
  return Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<string>((resolve) => {
          const socket = connect(port, '127.0.0.1');
          let text = '';
          socket.on('data', (d: Buffer) => {
            text += d.toString();
          });
          socket.on('error', () => resolve(`error:${text}`));
          socket.on('close', () => resolve(text));
        }),
    ),
  );
}

/**
 * Nothing listens on `port` any more: a connection is refused, and the port can be bound
 * again (a copy left open would keep it bound, connections queued).
 */
async function expectPortReleased(port: number): Promise<void> {
  expect(await burst(port, 1)).toEqual(['error:']);
  const again = createServer();
  await new Promise<void>((resolve, reject) => {
    again.once('error', reject);
    again.listen(port, '127.0.0.1', () => resolve());
  });
  await new Promise<void>((resolve) => again.close(() => resolve()));
}

/** Keep this process's event loop busy, ~20 ms a turn, as a loaded gateway's is. */
function busyLoop(): () => void {
  let busy = true;
  const turn = () => {
    if (!busy) return;
    const until = performance.now() + 20;
    while (performance.now() < until) {
      // a turn's worth of request work
    }
    setImmediate(turn);
  };
  setImmediate(turn);
  return () => {
    busy = false;
  };
}

it('a busy process accepts through every copy, and every connection reaches the front-end', async () => {
  const driver = driverWith(3);
  const accepted: Array<Server | undefined> = [];
  const { port } = await driver.start(echoFrontend(accepted));
  await driver.listenersCopied();
  const stop = busyLoop();
  try {
    const answers = await burst(port, 40);
    expect(answers).toEqual(Array.from({ length: 40 }, () => 'ok'));
  } finally {
    stop();
  }
  // More than one descriptor accepted (one alone takes one a turn).
  expect(new Set(accepted).size).toBeGreaterThan(1);
  await driver.stop();
});

it('the connection limit counts connections from every copy', async () => {
  const driver = driverWith(3);
  const accepted: Array<Server | undefined> = [];
  const holding: Socket[] = [];
  const frontend: Frontend<{ port: number }> = {
    name: 'copies-limit',
    async start(mount) {
      const server = createServer((socket: Socket) => {
        accepted.push((socket as Socket & { server?: Server }).server);
        holding.push(socket);
        socket.write('held');
      });
      const address = await mount.listen(server, { host: '127.0.0.1', port: 0 }, { maxConnections: 5 });
      return { port: address.port };
    },
  };
  const { port } = await driver.start(frontend);
  await driver.listenersCopied();
  const stop = busyLoop();
  const clients: Socket[] = [];
  const outcomes = await Promise.all(
    Array.from(
      { length: 12 },
      () =>
        new Promise<string>((resolve) => {
          const socket = connect(port, '127.0.0.1');
          clients.push(socket);
          socket.once('data', (d: Buffer) => resolve(d.toString()));
          socket.once('close', () => resolve('closed'));
          socket.once('error', () => resolve('closed'));
        }),
    ),
  );
  stop();
  expect(outcomes.filter((o) => o === 'held')).toHaveLength(5);
  expect(outcomes.filter((o) => o === 'closed')).toHaveLength(7);
  for (const c of clients) c.destroy();
  await driver.stop();
});

it('stopping the driver closes every copy: the port is free again and refuses connections', async () => {
  const driver = driverWith(3);
  const { port } = await driver.start(echoFrontend([]));
  await driver.listenersCopied();
  expect(await burst(port, 4)).toEqual(['ok', 'ok', 'ok', 'ok']);
  await driver.stop();
  await expectPortReleased(port);
});

it('a stop closes every copy at once: while a connection drains, a new one is refused, not taken and dropped', async () => {
  const driver = driverWith(3);
  const frontend: Frontend<{ port: number }> = {
    name: 'copies-drain',
    async start(mount) {
      // Each connection is work in flight until its client goes: the stop drains it, and the
      // server's own close waits for it.
      const server = createServer((socket: Socket) => {
        socket.write('held');
        void mount.serve(
          () => socket.destroy(),
          () => new Promise<void>((resolve) => socket.once('close', () => resolve())),
        );
      });
      const address = await mount.listen(server, { host: '127.0.0.1', port: 0 });
      return { port: address.port };
    },
  };
  const { port } = await driver.start(frontend);
  await driver.listenersCopied();
  const held = connect(port, '127.0.0.1');
  await new Promise((resolve) => held.once('data', resolve));
  const stopping = driver.stop({ drainMs: 1_000 });
  // A copy still listening would take this connection and the draining driver drop it ('').
  expect(await burst(port, 1)).toEqual(['error:']);
  held.destroy();
  await stopping;
});

it('a driver stopped while the copies are made keeps none: the port is free again', async () => {
  const driver = driverWith(3);
  const { port } = await driver.start(echoFrontend([]));
  await driver.stop();
  await driver.listenersCopied();
  await expectPortReleased(port);
});

it('a server closed on its own (not through the driver) takes its copies with it', async () => {
  const server = createServer((socket) => socket.end('ok'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as { port: number };
  const copies = await listenerCopies(server, 3);
  expect(copies).toHaveLength(3);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  expect(copies.map((c) => c.listening)).toEqual([false, false, false]);
  expect(await burst(port, 1)).toEqual(['error:']);
});

it('a server closed while its copies are made keeps none of them', async () => {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as { port: number };
  const making = listenerCopies(server, 3);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  expect(await making).toEqual([]);
  expect(await burst(port, 1)).toEqual(['error:']);
});

it('no copies without a listening handle, or when none are asked for', async () => {
  expect(await listenerCopies(createServer(), 3)).toEqual([]);
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  expect(await listenerCopies(server, 0)).toEqual([]);
  await new Promise<void>((resolve) => server.close(() => resolve()));
});
