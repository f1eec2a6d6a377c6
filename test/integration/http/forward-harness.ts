import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../../src/core/logger.js';
import { type ForwardProxy, startForwardProxy } from '../../../src/frontends/http/forward-proxy.js';
import type { Gateway } from './harness.js';

/** A test CA and a server certificate for 127.0.0.1/localhost signed by it (openssl CLI). */
export function testCa(
  dir: string,
  subjectAltName = 'IP:127.0.0.1,DNS:localhost',
): { caFile: string; key: string; cert: string } {
  const run = (args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const caKey = join(dir, 'test-ca.key');
  const caFile = join(dir, 'test-ca.crt');
  run([
    'req',
    '-x509',
    ...ec,
    '-keyout',
    caKey,
    '-out',
    caFile,
    '-days',
    '1',
    '-subj',
    '/CN=coatcheck test upstream CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const key = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const cert = join(dir, 'server.crt');
  const ext = join(dir, 'server.ext');
  writeFileSync(ext, `subjectAltName=${subjectAltName}\n`);
  run(['req', ...ec, '-keyout', key, '-out', csr, '-subj', '/CN=127.0.0.1']);
  run([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    caFile,
    '-CAkey',
    caKey,
    '-CAcreateserial',
    '-out',
    cert,
    '-days',
    '1',
    '-extfile',
    ext,
  ]);
  return { caFile, key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') };
}

export interface Proxied {
  readonly proxy: ForwardProxy;
  /** `host:port` of the proxy. */
  readonly address: string;
  /** The proxy CA written to a file, for clients to trust. */
  readonly caFile: string;
  logs(): string;
  close(): Promise<void>;
}

export async function startProxy(gw: Gateway, options: { upstreamCaFile?: string } = {}): Promise<Proxied> {
  let logText = '';
  const log = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk: Buffer, _e, cb) {
        logText += chunk.toString('utf8');
        cb();
      },
    }),
  });
  const proxy = await startForwardProxy(gw.ctx, { host: '127.0.0.1', port: 0 }, log, options);
  const caFile = join(gw.dir, 'proxy-ca.pem');
  writeFileSync(caFile, proxy.ca.cert);
  return {
    proxy,
    address: proxy.url.replace(/^http:\/\//, ''),
    caFile,
    logs: () => logText,
    close: () => proxy.close(),
  };
}

/** Send a raw CONNECT and read the proxy's answer (status line, headers, body) until it closes or says 200. */
export function rawConnect(
  address: string,
  target: string,
  proxyAuthorization?: string,
): Promise<{ status: number; head: string; body: string }> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(':')),
    Number(address.slice(address.lastIndexOf(':') + 1)),
  ];
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host, port });
    let text = '';
    const finish = () => {
      const split = text.indexOf('\r\n\r\n');
      const head = split === -1 ? text : text.slice(0, split);
      const body = split === -1 ? '' : text.slice(split + 4);
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), head, body });
      socket.destroy();
    };
    socket.on('data', (d: Buffer) => {
      text += d.toString('utf8');
      if (/^HTTP\/1\.1 200/.test(text) && text.includes('\r\n\r\n')) finish();
    });
    socket.on('end', finish);
    socket.on('error', reject);
    socket.write(
      `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${proxyAuthorization === undefined ? '' : `Proxy-Authorization: ${proxyAuthorization}\r\n`}\r\n`,
    );
  });
}

export function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

export interface GitServer {
  readonly url: string;
  readonly root: string;
  /** Authorization headers the server saw (to prove what reached it). */
  readonly authorizations: string[];
  close(): Promise<void>;
}

/**
 * A smart-HTTP git server over TLS: a small node https server that runs
 * `git http-backend` as CGI, requiring Basic auth with `password`.
 */
export async function startGitServer(
  root: string,
  tls: { key: string; cert: string },
  password: string,
): Promise<GitServer> {
  const authorizations: string[] = [];
  const children = new Set<ChildProcessWithoutNullStreams>();
  const server: Server = createHttpsServer(tls, (req, res) => {
    const auth = req.headers.authorization;
    if (auth !== undefined) authorizations.push(auth);
    const decoded = auth?.startsWith('Basic ') ? Buffer.from(auth.slice(6), 'base64').toString() : '';
    if (decoded.slice(decoded.indexOf(':') + 1) !== password) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="git"', 'content-length': 0 });
      res.end();
      return;
    }
    const url = new URL(req.url ?? '/', 'https://git.invalid');
    const child = spawn('git', ['http-backend'], {
      env: {
        PATH: process.env.PATH,
        GIT_PROJECT_ROOT: root,
        GIT_HTTP_EXPORT_ALL: '1',
        REMOTE_USER: decoded.slice(0, decoded.indexOf(':')),
        REQUEST_METHOD: req.method,
        PATH_INFO: decodeURIComponent(url.pathname),
        QUERY_STRING: url.search.slice(1),
        CONTENT_TYPE: req.headers['content-type'] ?? '',
        ...(req.headers['content-length'] === undefined
          ? {}
          : { CONTENT_LENGTH: String(req.headers['content-length']) }),
        ...(req.headers['content-encoding'] === undefined
          ? {}
          : { HTTP_CONTENT_ENCODING: String(req.headers['content-encoding']) }),
        GIT_PROTOCOL: String(req.headers['git-protocol'] ?? ''),
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    children.add(child);
    child.on('exit', () => children.delete(child));
    req.pipe(child.stdin);
    let buffer = Buffer.alloc(0);
    let headersDone = false;
    child.stdout.on('data', (chunk: Buffer) => {
      if (headersDone) {
        res.write(chunk);
        return;
      }
      buffer = Buffer.concat([buffer, chunk]);
      const end = buffer.indexOf('\r\n\r\n');
      if (end === -1) return;
      headersDone = true;
      let status = 200;
      const headers: Record<string, string> = {};
      for (const line of buffer.subarray(0, end).toString('latin1').split('\r\n')) {
        const colon = line.indexOf(':');
        const name = line.slice(0, colon).trim();
        const value = line.slice(colon + 1).trim();
        if (name.toLowerCase() === 'status') status = Number(value.split(' ')[0]);
        else headers[name] = value;
      }
      res.writeHead(status, headers);
      res.write(buffer.subarray(end + 4));
    });
    child.stdout.on('end', () => res.end());
    child.stderr.resume();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    root,
    authorizations,
    async close() {
      for (const child of children) child.kill();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A minimal WebSocket echo server over TLS (RFC 6455: handshake, one masked client text
 * frame in, one text frame out): it answers every message with the message and the
 * Authorization header it saw, `"<message> <authorization>"`.
 */
export async function startWebSocketServer(tls: { key: string; cert: string }): Promise<{
  url: string;
  authorizations: string[];
  close(): Promise<void>;
}> {
  const { createHash } = await import('node:crypto');
  const authorizations: string[] = [];
  const server: Server = createHttpsServer(tls, (_req, res) => {
    res.writeHead(426, { 'content-length': 0 });
    res.end();
  });
  server.on('upgrade', (req, socket) => {
    const auth = String(req.headers.authorization ?? '');
    authorizations.push(auth);
    const accept = createHash('sha1')
      .update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest('base64');
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nX-Seen: ${auth}\r\n\r\n`,
    );
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      while (buffer.length >= 6) {
        const opcode = buffer[0]! & 0x0f;
        const len = buffer[1]! & 0x7f; // small frames only
        if (buffer.length < 6 + len) return;
        const mask = buffer.subarray(2, 6);
        const payload = Buffer.from(buffer.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4]!));
        buffer = buffer.subarray(6 + len);
        if (opcode === 0x8) {
          socket.end(Buffer.from([0x88, 0x00]));
          return;
        }
        const reply = Buffer.from(`${payload.toString('utf8')} ${auth}`);
        socket.write(Buffer.concat([Buffer.from([0x81, reply.length]), reply]));
      }
    });
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `wss://127.0.0.1:${(server.address() as AddressInfo).port}`,
    authorizations,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
