import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy between a gateway replica and PostgreSQL that can delay, stall and cut,
 * per kind of connection: `listen` (the store's LISTEN connection, told apart by its
 * application_name in the startup packet) or `pool` (everything else).
 */
export type ConnKind = 'listen' | 'pool';

interface Link {
  readonly kind: ConnKind;
  readonly client: Socket;
  readonly server: Socket;
  /** Server-to-client chunks waiting for their release time, in order. */
  readonly down: Array<{ chunk: Buffer; at: number }>;
  /** Client-to-server chunks held while stalled. */
  readonly up: Buffer[];
  timer: NodeJS.Timeout | null;
}

export interface TcpProxy {
  readonly port: number;
  /** `url` with its host and port replaced by the proxy's. */
  via(url: string): string;
  /** Delay every server-to-client chunk of this kind by `ms` (0: none). Order is kept. */
  delay(kind: ConnKind, ms: number): void;
  /** Hold all traffic of this kind, both ways, until `resume` (a stalled connection). */
  stall(kind: ConnKind): void;
  resume(kind: ConnKind): void;
  /** Destroy every open connection of this kind. */
  cut(kind: ConnKind): void;
  /**
   * Arm a cut: on the next connection that sends `marker` and then a COMMIT, forward the
   * COMMIT to the server and drop the client at once (it never hears the answer).
   */
  cutAtCommitAfter(marker: string): Promise<void>;
  connections(kind: ConnKind): number;
  close(): Promise<void>;
}

export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  const links = new Set<Link>();
  const delays: Record<ConnKind, number> = { listen: 0, pool: 0 };
  const stalled: Record<ConnKind, boolean> = { listen: false, pool: false };
  let commitCut: { marker: string; fired: () => void } | null = null;

  const pump = (link: Link) => {
    if (link.timer !== null) return;
    const next = () => {
      link.timer = null;
      if (stalled[link.kind]) return;
      const now = Date.now();
      while (link.down.length > 0 && link.down[0]!.at <= now) {
        const { chunk } = link.down.shift()!;
        if (!link.client.destroyed) link.client.write(chunk);
      }
      if (link.down.length > 0) link.timer = setTimeout(next, link.down[0]!.at - now);
    };
    next();
  };

  const server: Server = createServer((client) => {
    const upstream = createConnection({ host: targetHost, port: targetPort });
    let link: Link | null = null;
    let sawMarker = false;
    let cutting = false;
    const drop = () => {
      client.destroy();
      // A cut connection's last bytes (the COMMIT) must still reach the server: end, not destroy.
      if (cutting) upstream.end();
      else upstream.destroy();
      if (link !== null) {
        if (link.timer !== null) clearTimeout(link.timer);
        links.delete(link);
      }
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
    client.on('data', (chunk: Buffer) => {
      if (link === null) {
        // The first chunk is the startup packet: it names the application.
        const kind: ConnKind = chunk.includes('coatcheck-listen') ? 'listen' : 'pool';
        link = { kind, client, server: upstream, down: [], up: [], timer: null };
        links.add(link);
      }
      if (commitCut !== null && chunk.includes(commitCut.marker)) sawMarker = true;
      if (commitCut !== null && sawMarker && chunk.includes('COMMIT')) {
        const { fired } = commitCut;
        commitCut = null;
        cutting = true;
        // The server gets the COMMIT (and commits) before the end of its stream; the client never hears back.
        upstream.end(chunk);
        client.destroy();
        fired();
        return;
      }
      if (stalled[link.kind]) link.up.push(chunk);
      else upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (link === null) {
        client.write(chunk);
        return;
      }
      const last = link.down.at(-1)?.at ?? 0;
      link.down.push({ chunk, at: Math.max(Date.now() + delays[link.kind], last) });
      pump(link);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;

  return {
    port,
    via(url) {
      const parsed = new URL(url);
      parsed.hostname = '127.0.0.1';
      parsed.port = String(port);
      return parsed.toString();
    },
    delay(kind, ms) {
      delays[kind] = ms;
    },
    stall(kind) {
      stalled[kind] = true;
    },
    resume(kind) {
      stalled[kind] = false;
      for (const link of links) {
        if (link.kind !== kind) continue;
        for (const chunk of link.up.splice(0)) link.server.write(chunk);
        pump(link);
      }
    },
    cut(kind) {
      for (const link of [...links]) {
        if (link.kind !== kind) continue;
        link.client.destroy();
        link.server.destroy();
      }
    },
    cutAtCommitAfter(marker) {
      return new Promise<void>((resolve) => {
        commitCut = { marker, fired: resolve };
      });
    },
    connections(kind) {
      return [...links].filter((l) => l.kind === kind).length;
    },
    close() {
      for (const link of [...links]) {
        link.client.destroy();
        link.server.destroy();
      }
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
