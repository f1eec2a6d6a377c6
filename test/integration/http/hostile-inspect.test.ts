/**
 * A hostile agent against the response inspector of the reverse proxy: the ticket is
 * exchanged into a request, the upstream (the agent may control it) reflects the secret
 * in some encoding, and the agent reads the answer. Every answer must hold a ticket where
 * the secret stood, and the canary must appear nowhere: not in the body, headers, header
 * names, error bodies or the gateway's logs.
 */
import { execFile } from 'node:child_process';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { promisify } from 'node:util';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeView } from '../../../src/detect/canonical.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const run = promisify(execFile);

/** The canary: it holds the characters encoders like to escape. */
const SECRET = "cc-canary&S3cret<v>'x+0123/~!()*";
/** A header-name-safe canary (HTTP tokens only). */
const NAME_SECRET = 'hn-S3cretHeaderName0123456';
/** A value the agent made the vault learn: it ends with the target's first character. */
const TARGET = 'Xtarget-secret-value-0123456789';
const CHOSEN = `ghp_${'A'.repeat(35)}X`;
/** Another learnt value, overlapping the target by five characters. */
const CHOSEN5 = `ghp_${'B'.repeat(31)}${TARGET.slice(0, 5)}`;

let gw: Gateway;
let up: Upstream;
let agent: { key: string; ref: string };
let ticket: string;
const seen: string[] = [];

/** What the upstream reflects, given the secret it received (a reflection point the agent found). */
type Reflect = (secret: string, res: ServerResponse, req: IncomingMessage) => void;
const reflections = new Map<string, Reflect>();

async function reflect(
  name: string,
): Promise<{ status: number; text: string; headers: Record<string, unknown> }> {
  const res = await request(`${gw.url}/c/api/reflect?as=${name}`, {
    headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${ticket}` },
  });
  const text = await res.body.text();
  seen.push(text, JSON.stringify(res.headers));
  return { status: res.statusCode, text, headers: res.headers };
}

/** Every decoding a reader could apply, to any depth: the canary must not come out. */
function decodedAll(text: string): string {
  let view = text;
  for (let i = 0; i < 4; i++) {
    const d = decodeView(view, 'text');
    if (!d.changed) break;
    view = d.view;
  }
  return view;
}

function expectClean(text: string): void {
  for (const value of [SECRET, NAME_SECRET, TARGET.slice(1)]) {
    expect(text).not.toContain(value);
    expect(text.toLowerCase()).not.toContain(value.toLowerCase());
    expect(decodedAll(text)).not.toContain(value);
    expect(decodedAll(decodeURIComponent(text.replace(/%(?![0-9a-fA-F]{2})/g, '%25')))).not.toContain(value);
  }
}

const hex = (c: string) => c.charCodeAt(0).toString(16).padStart(2, '0');
const json = (body: string) => (res: ServerResponse) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(body);
};

beforeAll(async () => {
  up = await startUpstream();
  gw = await startGateway();
  agent = await gw.createAgent('hostile');
  await gw.addSecret('canary', SECRET, ['api']);
  await gw.addSecret('name', NAME_SECRET, ['api']);
  await gw.addSecret('target', TARGET, ['api']);
  await gw.addSecret('chosen', CHOSEN, ['api']);
  await gw.addSecret('chosen5', CHOSEN5, ['api']);
  await gw.addConnection('api', up.url);
  ticket = await gw.issue('canary', agent.ref, ['api']);
  up.handle('/reflect', (req, res) => {
    const secret = String(req.headers.authorization ?? '').replace(/^Bearer /, '');
    const as = new URL(req.url ?? '/', 'http://x').searchParams.get('as') ?? '';
    const handler = reflections.get(as);
    if (handler === undefined) {
      res.writeHead(404);
      res.end();
      return;
    }
    handler(secret, res, req);
  });
  // JSON \u escapes of ordinary characters.
  const goJson = (s: string) => JSON.stringify(s).replace(/[&<>'+]/g, (c) => `\\u00${hex(c)}`);
  reflections.set('go-json', (s, res) => json(`{"token":${goJson(s)}}`)(res));
  reflections.set('json-every-letter', (s, res) =>
    json(`{"token":"${[...s].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')}"}`)(
      res,
    ),
  );
  reflections.set('json-upper-hex', (s, res) =>
    json(`{"t":${goJson(s).replace(/\\u00([0-9a-f]{2})/g, (_, h: string) => `\\u00${h.toUpperCase()}`)}}`)(
      res,
    ),
  );
  reflections.set('json-in-json', (s, res) => json(`{"inner":${JSON.stringify(`{"t":${goJson(s)}}`)}}`)(res));
  // Percent-encoding of !'()*~ (Python quote(safe=''), Java URLEncoder), mixed case.
  const pct = (s: string, upper: boolean) =>
    [...s].map((c) => (/[A-Za-z0-9]/.test(c) ? c : `%${upper ? hex(c).toUpperCase() : hex(c)}`)).join('');
  reflections.set('percent-python', (s, res) => json(`{"next":"/p?q=${pct(s, true)}"}`)(res));
  reflections.set('percent-lower', (s, res) => json(`{"next":"/p?q=${pct(s, false)}"}`)(res));
  reflections.set('percent-mixed', (s, res) =>
    json(`{"next":"/p?q=${[...pct(s, true)].map((c, i) => (i % 2 ? c.toLowerCase() : c)).join('')}"}`)(res),
  );
  reflections.set('percent-everything', (s, res) =>
    json(`{"q":"${[...s].map((c) => `%${hex(c)}`).join('')}"}`)(res),
  );
  // HTML character references.
  const html = (s: string) =>
    s
      .replace(/&/g, '&amp;')
      .replace(/</g, '&lt;')
      .replace(/>/g, '&gt;')
      .replace(/'/g, '&#39;')
      .replace(/\+/g, '&#x2b;');
  reflections.set('html', (s, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<p title="${html(s)}">hi</p>`);
  });
  reflections.set('html-decimal', (s, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<p>${[...s].map((c) => `&#${c.charCodeAt(0)};`).join('')}</p>`);
  });
  reflections.set('html-hex-upper', (s, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<p>${[...s].map((c) => `&#X${hex(c).toUpperCase()};`).join('')}</p>`);
  });
  reflections.set('html-named', (s, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(
      `<p>${s.replace(/&/g, '&amp;').replace(/\//g, '&sol;').replace(/\(/g, '&lpar;').replace(/\*/g, '&ast;')}</p>`,
    );
  });
  // Transfer codings undici does not undo.
  reflections.set('te-gzip', (s, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'gzip, chunked' });
    res.end(gzipSync(`{"token":"${s}"}`));
  });
  reflections.set('te-deflate', (s, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'deflate, chunked' });
    res.end(deflateSync(`{"token":"${s}"}`));
  });
  reflections.set('te-gzip-ce-br', (s, res) => {
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-encoding': 'br',
      'transfer-encoding': 'gzip, chunked',
    });
    res.end(gzipSync(brotliCompressSync(`{"token":"${s}"}`)));
  });
  reflections.set('te-unknown', (s, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'x-rot13, chunked' });
    res.end(`{"token":"${s}"}`);
  });
  // Response header names.
  reflections.set('header-name', (_s, res) => {
    res.writeHead(200, { [`x-${NAME_SECRET}`]: '1', 'content-type': 'text/plain' });
    res.end('ok');
  });
  reflections.set('header-name-bare', (_s, res) => {
    res.writeHead(200, { [NAME_SECRET]: 'v', 'content-type': 'text/plain' });
    res.end('ok');
  });
  reflections.set('header-name-two', (_s, res) => {
    res.setHeader(`a-${NAME_SECRET}-b`, '1');
    res.setHeader(`${NAME_SECRET}-tail`, '2');
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
  });
  // Overlapping secrets (the agent made the vault learn CHOSEN).
  reflections.set('overlap', (_s, res) => json(`{"out":"${CHOSEN}${TARGET.slice(1)}"}`)(res));
  reflections.set('overlap-escaped', (_s, res) =>
    json(`{"out":"${CHOSEN}${TARGET.slice(1).replace(/-/g, '\\u002d')}"}`)(res),
  );
  reflections.set('overlap-chain', (_s, res) => json(`{"out":"${CHOSEN5}${TARGET.slice(5)}"}`)(res));
  reflections.set('overlap-sse', (_s, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const event = `data: ${CHOSEN}${TARGET.slice(1)}\n\n`;
    let at = 0;
    const step = () => {
      if (at >= event.length) {
        res.end();
        return;
      }
      res.write(event.slice(at, at + 7));
      at += 7;
      setTimeout(step, 2);
    };
    step();
  });
});

afterAll(async () => {
  await gw?.close();
  await up?.close();
  expectClean(gw.logs());
  for (const text of seen) expectClean(text);
});

describe('reverse proxy: escaped forms of a secret become tickets', () => {
  for (const name of [
    'go-json',
    'json-every-letter',
    'json-upper-hex',
    'json-in-json',
    'percent-python',
    'percent-lower',
    'percent-mixed',
    'percent-everything',
    'html',
    'html-decimal',
    'html-hex-upper',
    'html-named',
  ]) {
    it(name, async () => {
      const res = await reflect(name);
      expect(res.status).toBe(200);
      expectClean(res.text);
      expect(res.text).toMatch(/cct_[0-9A-Za-z]{28}/);
    });
  }
});

describe('reverse proxy: transfer codings', () => {
  for (const name of ['te-gzip', 'te-deflate', 'te-gzip-ce-br']) {
    it(`${name} is decoded and inspected`, async () => {
      const res = await reflect(name);
      expect(res.status).toBe(200);
      expectClean(res.text);
      expect(JSON.parse(res.text).token).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    });
  }

  it('a transfer coding the gateway cannot decode is refused, not passed', async () => {
    const res = await reflect('te-unknown');
    expect(res.status).toBe(502);
    expect(JSON.parse(res.text).error.code).toBe('CC_ERR_GATEWAY_UPSTREAM_ENCODING');
  });
});

describe('reverse proxy: response header names are inspected', () => {
  for (const name of ['header-name', 'header-name-bare', 'header-name-two']) {
    it(name, async () => {
      const res = await reflect(name);
      expect(res.status).toBe(200);
      expectClean(Object.keys(res.headers).join('\n'));
      expect(Object.keys(res.headers).some((h) => /cct_[0-9a-z]{28}/i.test(h))).toBe(true);
    });
  }

  it('with curl as the client', async () => {
    const { stdout } = await run('curl', [
      '-sS',
      '-i',
      '-H',
      `Proxy-Authorization: Bearer ${agent.key}`,
      '-H',
      `Authorization: Bearer ${ticket}`,
      `${gw.url}/c/api/reflect?as=header-name-two`,
    ]);
    seen.push(stdout);
    expectClean(stdout);
  });
});

describe('reverse proxy: overlapping secrets leak nothing', () => {
  for (const name of ['overlap', 'overlap-escaped', 'overlap-chain', 'overlap-sse']) {
    it(name, async () => {
      const res = await reflect(name);
      expect(res.status).toBe(200);
      expectClean(res.text);
      expect(res.text).not.toContain('secret-value');
    });
  }

  it('with curl, streamed', async () => {
    const { stdout } = await run('curl', [
      '-sS',
      '-N',
      '-H',
      `Proxy-Authorization: Bearer ${agent.key}`,
      '-H',
      `Authorization: Bearer ${ticket}`,
      `${gw.url}/c/api/reflect?as=overlap-sse`,
    ]);
    seen.push(stdout);
    expect(stdout).not.toContain('secret-value');
  });
});

describe('reverse proxy: small bodies of known length are inspected whole and sent in one write', () => {
  /** The upstream declares the length and sends the body in pieces, `pause` ms apart. */
  const pieces =
    (body: string, cuts: number[], pause = 5) =>
    async (res: ServerResponse) => {
      const bytes = Buffer.from(body);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(bytes.length) });
      let at = 0;
      for (const cut of [...cuts, bytes.length]) {
        res.write(bytes.subarray(at, cut));
        at = cut;
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
      res.end();
    };

  beforeAll(() => {
    const body = (s: string) => `{"token":${JSON.stringify(s)},"pad":"${'x'.repeat(100)}"}`;
    // The secret cut in three across the pieces, and the secret as the very last bytes.
    reflections.set('known-length-split', (s, res) => void pieces(body(s), [12, 15, 20])(res));
    reflections.set('known-length-tail', (s, res) => void pieces(`{"pad":"x","t":"${s}`, [5])(res));
    // At the bound (64 KiB: whole) and one byte past it (streamed, chunked as before).
    const sized = (s: string, size: number) => {
      const head = `{"token":${JSON.stringify(s)},"pad":"`;
      return `${head}${'y'.repeat(size - head.length - 2)}"}`;
    };
    reflections.set(
      'known-length-at-bound',
      (s, res) => void pieces(sized(s, 64 * 1024), [1000, 40_000])(res),
    );
    reflections.set(
      'known-length-past-bound',
      (s, res) => void pieces(sized(s, 64 * 1024 + 1), [1000, 40_000])(res),
    );
  });

  async function reflectRaw(name: string) {
    const res = await request(`${gw.url}/c/api/reflect?as=${name}`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${ticket}` },
    });
    const bytes = Buffer.from(await res.body.arrayBuffer());
    seen.push(bytes.toString('latin1'), JSON.stringify(res.headers));
    return { status: res.statusCode, bytes, headers: res.headers };
  }

  for (const name of ['known-length-split', 'known-length-tail', 'known-length-at-bound']) {
    it(`${name}: the length after inspection, not chunked, the secret a ticket`, async () => {
      const res = await reflectRaw(name);
      expect(res.status).toBe(200);
      expect(res.headers['transfer-encoding']).toBeUndefined();
      // A ticket is shorter than the secret: the length is the body's as sent, not the upstream's.
      expect(res.headers['content-length']).toBe(String(res.bytes.length));
      const text = res.bytes.toString('utf8');
      expectClean(text);
      expect(text).toMatch(/cct_[0-9A-Za-z]{28}/);
    });
  }

  it('one byte past the bound is streamed as before (chunked), and as clean', async () => {
    const res = await reflectRaw('known-length-past-bound');
    expect(res.status).toBe(200);
    expect(res.headers['transfer-encoding']).toBe('chunked');
    expect(res.headers['content-length']).toBeUndefined();
    expectClean(res.bytes.toString('utf8'));
    expect(res.bytes.toString('utf8')).toMatch(/cct_[0-9A-Za-z]{28}/);
  });

  it('an upstream that closes before its declared length is an error, and nothing of it is sent', async () => {
    reflections.set('known-length-short', (s, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '500' });
      res.write(`{"token":${JSON.stringify(s)}`);
      setTimeout(() => res.destroy(), 10);
    });
    const res = await reflectRaw('known-length-short');
    expect(res.status).toBe(502);
    expectClean(res.bytes.toString('utf8'));
    expect(res.bytes.toString('utf8')).not.toContain('"token"');
  });
});
