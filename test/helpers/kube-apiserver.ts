import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';

/**
 * A test Kubernetes API server. No kube-apiserver can be installed on this machine (not in
 * Debian's archive, not on npm), so this implements what kubectl 1.32 uses, over real
 * HTTPS: bearer-token and client-certificate authentication, the discovery documents
 * (/version, /api, /apis, /api/v1, /apis/apps/v1; aggregated discovery is answered with
 * the legacy documents, which kubectl falls back to), get / list / watch / create / delete
 * / deletecollection of pods, secrets, configmaps, namespaces and deployments, watch
 * streams (newline-delimited JSON events, chunked), and exec over WebSocket
 * (v5.channel.k8s.io / v4.channel.k8s.io, served by the `ws` library, so the gateway's own
 * WebSocket codec is checked against an independent one). It is not Kubernetes: no
 * admission, no resource versions beyond a counter, no field validation, no OpenAPI.
 */

interface WsSocket {
  readonly protocol: string;
  readonly readyState: number;
  send(data: Buffer, options?: { binary?: boolean }): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
  on(event: 'message', listener: (data: Buffer) => void): void;
  on(event: 'close', listener: () => void): void;
}
interface WsServer {
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, cb: (ws: WsSocket) => void): void;
  close(): void;
}
const { WebSocketServer } = createRequire(import.meta.url)('ws') as {
  WebSocketServer: new (options: {
    noServer: true;
    perMessageDeflate: false;
    handleProtocols: (protocols: Set<string>) => string | false;
  }) => WsServer;
};

export type KubeObject = Record<string, unknown> & {
  metadata: { name: string; namespace?: string; [key: string]: unknown };
};

export interface Recorded {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingMessage['headers'];
  readonly body: string;
  readonly clientCert: boolean;
}

export interface ExecCall {
  readonly pod: string;
  readonly namespace: string;
  readonly command: string[];
  readonly protocol: string;
  closed: boolean;
}

export interface KubeApiServer {
  readonly url: string;
  /** The server's CA certificate (PEM), for `--ca`. */
  readonly caPem: string;
  readonly caFile: string;
  /** A client certificate and key (PEM, one text) the server accepts. */
  readonly clientCredential: string;
  readonly received: Recorded[];
  readonly execs: ExecCall[];
  put(resource: string, object: KubeObject): void;
  get(resource: string, namespace: string, name: string): KubeObject | undefined;
  /** Send a watch event to every open watch of `resource`; false when a watcher's socket pushes back. */
  emit(resource: string, type: 'ADDED' | 'MODIFIED' | 'DELETED', object: KubeObject): boolean;
  /** Open watches now. */
  watches(): number;
  /** True once every open watch's socket has taken what was written, false after `timeoutMs` without. */
  watchesDrained(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

interface ResourceInfo {
  readonly name: string;
  readonly kind: string;
  readonly group: string;
  readonly namespaced: boolean;
  readonly verbs: string[];
}

const RESOURCES: readonly ResourceInfo[] = [
  {
    name: 'pods',
    kind: 'Pod',
    group: '',
    namespaced: true,
    verbs: ['get', 'list', 'watch', 'create', 'delete', 'deletecollection'],
  },
  {
    name: 'secrets',
    kind: 'Secret',
    group: '',
    namespaced: true,
    verbs: ['get', 'list', 'watch', 'create', 'delete'],
  },
  {
    name: 'configmaps',
    kind: 'ConfigMap',
    group: '',
    namespaced: true,
    verbs: ['get', 'list', 'watch', 'create', 'delete'],
  },
  { name: 'namespaces', kind: 'Namespace', group: '', namespaced: false, verbs: ['get', 'list', 'watch'] },
  { name: 'services', kind: 'Service', group: '', namespaced: true, verbs: ['get', 'list'] },
  {
    name: 'deployments',
    kind: 'Deployment',
    group: 'apps',
    namespaced: true,
    verbs: ['get', 'list', 'watch', 'delete'],
  },
];

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

/** A CA, a server certificate for 127.0.0.1 (and `host`) and a client certificate, made now with the openssl CLI. */
function certificates(dir: string, host = '127.0.0.1') {
  const f = (name: string) => join(dir, name);
  openssl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.crt'),
    '-days',
    '1',
    '-subj',
    '/CN=test-kube-ca',
  ]);
  for (const [name, subject, ext] of [
    [
      'server',
      '/CN=kube-apiserver',
      `subjectAltName=IP:127.0.0.1,DNS:localhost${host === '127.0.0.1' ? '' : `,IP:${host}`}`,
    ],
    ['client', '/CN=coatcheck-test/O=system:masters', 'extendedKeyUsage=clientAuth'],
  ] as const) {
    openssl([
      'req',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      f(`${name}.key`),
      '-out',
      f(`${name}.csr`),
      '-subj',
      subject,
    ]);
    const extFile = f(`${name}.ext`);
    execFileSync('sh', ['-c', `printf '%s\\n' '${ext}' > '${extFile}'`]);
    openssl([
      'x509',
      '-req',
      '-in',
      f(`${name}.csr`),
      '-CA',
      f('ca.crt'),
      '-CAkey',
      f('ca.key'),
      '-CAcreateserial',
      '-out',
      f(`${name}.crt`),
      '-days',
      '1',
      '-extfile',
      extFile,
    ]);
  }
  const read = (name: string) => readFileSync(f(name), 'utf8');
  return {
    ca: read('ca.crt'),
    caFile: f('ca.crt'),
    serverKey: read('server.key'),
    serverCert: read('server.crt'),
    client: `${read('client.crt')}${read('client.key')}`,
  };
}

function status(code: number, reason: string, message: string): string {
  return JSON.stringify({
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason,
    code,
  });
}

export async function startKubeApiServer(options: {
  dir: string;
  token: string;
  /** Listen address (an IP address; default 127.0.0.1) and port (default: any free). */
  host?: string;
  port?: number;
}): Promise<KubeApiServer> {
  const host = options.host ?? '127.0.0.1';
  const certs = certificates(options.dir, host);
  const received: Recorded[] = [];
  const execs: ExecCall[] = [];
  const store = new Map<string, Map<string, KubeObject>>();
  const watchers = new Map<string, Set<{ res: ServerResponse; namespace: string }>>();
  let version = 100;
  const key = (_resource: string, namespace: string, name: string) => `${namespace}/${name}`;
  const table = (resource: string) => {
    let t = store.get(resource);
    if (t === undefined) {
      t = new Map();
      store.set(resource, t);
    }
    return t;
  };
  const info = (resource: string) => RESOURCES.find((r) => r.name === resource);
  const withKind = (resource: string, object: KubeObject): KubeObject => {
    const r = info(resource)!;
    return { kind: r.kind, apiVersion: r.group === '' ? 'v1' : `${r.group}/v1`, ...object };
  };
  const emit = (resource: string, type: string, object: KubeObject): boolean => {
    let flowing = true;
    for (const w of watchers.get(resource) ?? []) {
      if (w.namespace !== '' && object.metadata.namespace !== w.namespace) continue;
      if (!w.res.write(`${JSON.stringify({ type, object: withKind(resource, object) })}\n`)) flowing = false;
    }
    return flowing;
  };
  const put = (resource: string, object: KubeObject) => {
    version++;
    object.metadata.resourceVersion = String(version);
    object.metadata.uid ??= `uid-${object.metadata.name}-${version}`;
    object.metadata.creationTimestamp ??= '2026-01-01T00:00:00Z';
    const t = table(resource);
    const k = key(resource, object.metadata.namespace ?? '', object.metadata.name);
    const existed = t.has(k);
    t.set(k, object);
    emit(resource, existed ? 'MODIFIED' : 'ADDED', object);
  };
  for (const ns of ['default', 'prod', 'staging']) put('namespaces', { metadata: { name: ns } });

  const authorized = (req: IncomingMessage): boolean => {
    const socket = req.socket as TLSSocket;
    if (socket.authorized) return true;
    return req.headers.authorization === `Bearer ${options.token}`;
  };

  const json = (res: ServerResponse, code: number, body: unknown) => {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };

  const discovery = (path: string): unknown => {
    if (path === '/version')
      return { major: '1', minor: '32', gitVersion: 'v1.32.0-coatcheck-test', platform: 'linux/amd64' };
    if (path === '/api')
      return {
        kind: 'APIVersions',
        versions: ['v1'],
        serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: '127.0.0.1' }],
      };
    if (path === '/apis')
      return {
        kind: 'APIGroupList',
        apiVersion: 'v1',
        groups: [
          {
            name: 'apps',
            versions: [{ groupVersion: 'apps/v1', version: 'v1' }],
            preferredVersion: { groupVersion: 'apps/v1', version: 'v1' },
          },
        ],
      };
    const list = (group: string) => ({
      kind: 'APIResourceList',
      apiVersion: 'v1',
      groupVersion: group === '' ? 'v1' : `${group}/v1`,
      resources: RESOURCES.filter((r) => r.group === group).flatMap((r) => [
        {
          name: r.name,
          singularName: r.kind.toLowerCase(),
          namespaced: r.namespaced,
          kind: r.kind,
          verbs: r.verbs,
        },
        ...(r.name === 'pods'
          ? [
              {
                name: 'pods/exec',
                singularName: '',
                namespaced: true,
                kind: 'PodExecOptions',
                verbs: ['create', 'get'],
              },
              { name: 'pods/log', singularName: '', namespaced: true, kind: 'Pod', verbs: ['get'] },
            ]
          : []),
      ]),
    });
    if (path === '/api/v1') return list('');
    if (path === '/apis/apps/v1') return list('apps');
    return undefined;
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const url = new URL(req.url ?? '/', 'https://kube');
      received.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body,
        clientCert: (req.socket as TLSSocket).authorized,
      });
      if (!authorized(req)) {
        json(res, 401, status(401, 'Unauthorized', 'Unauthorized'));
        return;
      }
      const found = discovery(url.pathname);
      if (found !== undefined) {
        json(res, 200, found);
        return;
      }
      // /api/v1[/namespaces/NS]/RESOURCE[/NAME[/SUB]]  or  /apis/apps/v1/…
      const m =
        /^\/(?:api\/v1|apis\/(apps)\/v1)(?:\/namespaces\/([a-z0-9-]+))?\/([a-z]+)(?:\/([a-z0-9.-]+))?(?:\/([a-z]+))?$/.exec(
          url.pathname,
        );
      if (m === null) {
        json(
          res,
          404,
          status(404, 'NotFound', `the server could not find the requested resource (${url.pathname})`),
        );
        return;
      }
      let [, group = '', namespace = '', resource = '', name = '', sub = ''] = m;
      // /api/v1/namespaces/NAME is the namespace object itself.
      if (resource !== '' && namespace !== '' && url.pathname.endsWith(`/namespaces/${namespace}`)) {
        resource = 'namespaces';
        name = namespace;
        namespace = '';
      }
      const r = info(resource);
      if (r === undefined || r.group !== group) {
        json(res, 404, status(404, 'NotFound', `the server could not find the requested resource`));
        return;
      }
      if (sub === 'log' && req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`log of ${name}\n`);
        return;
      }
      const t = table(resource);
      const inScope = (o: KubeObject) => namespace === '' || o.metadata.namespace === namespace;
      if (name === '') {
        if (req.method === 'GET' && url.searchParams.get('watch') === 'true') {
          res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
          res.flushHeaders();
          for (const o of t.values())
            if (inScope(o))
              res.write(`${JSON.stringify({ type: 'ADDED', object: withKind(resource, o) })}\n`);
          const w = { res, namespace };
          const set = watchers.get(resource) ?? new Set();
          set.add(w);
          watchers.set(resource, set);
          res.on('close', () => set.delete(w));
          return;
        }
        if (req.method === 'GET') {
          json(res, 200, {
            kind: `${r.kind}List`,
            apiVersion: r.group === '' ? 'v1' : `${r.group}/v1`,
            metadata: { resourceVersion: String(version) },
            items: [...t.values()].filter(inScope),
          });
          return;
        }
        if (req.method === 'POST') {
          const object = JSON.parse(body) as KubeObject;
          object.metadata.namespace = namespace;
          delete object.kind;
          delete object.apiVersion;
          put(resource, object);
          json(res, 201, withKind(resource, object));
          return;
        }
        if (req.method === 'DELETE') {
          for (const [k, o] of t) if (inScope(o)) t.delete(k);
          json(res, 200, { kind: `${r.kind}List`, apiVersion: 'v1', metadata: {}, items: [] });
          return;
        }
      } else {
        const k = key(resource, namespace, name);
        const object = t.get(k);
        if (object === undefined) {
          json(res, 404, status(404, 'NotFound', `${resource} "${name}" not found`));
          return;
        }
        if (req.method === 'GET') {
          json(res, 200, withKind(resource, object));
          return;
        }
        if (req.method === 'DELETE') {
          t.delete(k);
          emit(resource, 'DELETED', object);
          json(res, 200, withKind(resource, object));
          return;
        }
      }
      json(res, 405, status(405, 'MethodNotAllowed', 'method not allowed'));
    });
  };

  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    handleProtocols: (protocols) =>
      ['v5.channel.k8s.io', 'v4.channel.k8s.io'].find((p) => protocols.has(p)) ?? false,
  });
  const server: Server = createServer(
    {
      key: certs.serverKey,
      cert: certs.serverCert,
      ca: certs.ca,
      requestCert: true,
      rejectUnauthorized: false,
    },
    onRequest,
  );
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? '/', 'https://kube');
    received.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body: '',
      clientCert: (req.socket as TLSSocket).authorized,
    });
    const m = /^\/api\/v1\/namespaces\/([a-z0-9-]+)\/pods\/([a-z0-9-]+)\/(exec|attach)$/.exec(url.pathname);
    const reply = (code: number, reason: string, message: string) => {
      const text = status(code, reason, message);
      socket.end(
        `HTTP/1.1 ${code} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`,
      );
    };
    if (!authorized(req)) return reply(401, 'Unauthorized', 'Unauthorized');
    if (m === null) return reply(404, 'NotFound', 'not found');
    const pod = table('pods').get(`${m[1]}/${m[2]}`);
    if (pod === undefined) return reply(404, 'NotFound', `pods "${m[2]}" not found`);
    wss.handleUpgrade(req, socket, head, (ws) => {
      const call: ExecCall = {
        pod: m[2]!,
        namespace: m[1]!,
        command: url.searchParams.getAll('command'),
        protocol: ws.protocol,
        closed: false,
      };
      execs.push(call);
      const env = ((pod.spec as { env?: Record<string, string> } | undefined)?.env ?? {}) as Record<
        string,
        string
      >;
      const out = (channel: number, text: string) => {
        if (ws.readyState === 1)
          ws.send(Buffer.concat([Buffer.from([channel]), Buffer.from(text)]), { binary: true });
      };
      const done = (exit: number) => {
        const result =
          exit === 0
            ? { metadata: {}, status: 'Success' }
            : {
                metadata: {},
                status: 'Failure',
                message: `command terminated with non-zero exit code: ${exit}`,
                reason: 'NonZeroExitCode',
                details: { causes: [{ reason: 'ExitCode', message: String(exit) }] },
              };
        out(3, JSON.stringify(result));
        ws.close(1000);
      };
      let timer: NodeJS.Timeout | null = null;
      ws.on('close', () => {
        call.closed = true;
        if (timer !== null) clearInterval(timer);
      });
      const [cmd, ...args] = call.command;
      if (cmd === 'echo') {
        out(1, `${args.join(' ')}\n`);
        done(0);
      } else if (cmd === 'printenv') {
        const value = env[args[0] ?? ''];
        if (value === undefined) done(1);
        else {
          // Split across two messages: the gateway must still see the value whole.
          const line = `${value}\n`;
          out(1, line.slice(0, 5));
          setTimeout(() => {
            out(1, line.slice(5));
            done(0);
          }, 20);
        }
      } else if (cmd === 'stderr') {
        out(2, `${args.join(' ')}\n`);
        done(0);
      } else if (cmd === 'tick') {
        let n = 0;
        timer = setInterval(() => out(1, `tick ${n++}\n`), 50);
      } else if (cmd === 'cat') {
        ws.on('message', (data: Buffer) => {
          if (data[0] === 0) out(1, data.subarray(1).toString());
          if (data[0] === 255) done(0);
        });
      } else {
        out(2, `unknown command ${cmd}\n`);
        done(127);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, host, resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `https://${host}:${port}`,
    caPem: certs.ca,
    caFile: certs.caFile,
    clientCredential: certs.client,
    received,
    execs,
    put,
    get: (resource, namespace, name) => table(resource).get(`${namespace}/${name}`),
    emit: (resource, type, object) => emit(resource, type, object),
    watches: () => [...watchers.values()].reduce((n, s) => n + s.size, 0),
    watchesDrained: (timeoutMs) =>
      Promise.all(
        [...watchers.values()].flatMap((set) =>
          [...set].map(
            (w) =>
              new Promise<boolean>((resolve) => {
                if (!w.res.writableNeedDrain) return resolve(true);
                const timer = setTimeout(() => resolve(false), timeoutMs);
                w.res.once('drain', () => {
                  clearTimeout(timer);
                  resolve(true);
                });
              }),
          ),
        ),
      ).then((all) => all.every(Boolean)),
    close: () =>
      new Promise<void>((resolve) => {
        wss.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
