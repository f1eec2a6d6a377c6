import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';

/**
 * The web console's static files, served by the admin listener under `/console/`.
 *
 * The files are public (the console asks for the admin key itself and sends it as a
 * bearer header to the JSON API), so they are served without authentication. Only the
 * names below can be served: the request path is never joined to a file-system path,
 * so no traversal is possible. Every response carries a strict CSP: scripts, styles and
 * requests from this origin only, no framing, no inline script.
 */

/** `console/` at the package root: `src/admin/` (tsx, vitest) and `dist/admin/` (built) both sit two levels down. */
export const CONSOLE_DIR = fileURLToPath(new URL('../../console/', import.meta.url));

export const CONSOLE_PREFIX = '/console/';

const FILES: Readonly<Record<string, string>> = {
  'index.html': 'text/html; charset=utf-8',
  'console.css': 'text/css; charset=utf-8',
  'console.js': 'text/javascript; charset=utf-8',
};

export const CONSOLE_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const SECURITY_HEADERS = {
  'content-security-policy': CONSOLE_CSP,
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
} as const;

function plain(res: ServerResponse, status: number, text: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    ...extra,
  });
  res.end(text);
}

/**
 * Serve `/` (a redirect), `/console` and `/console/<file>`. Returns false for any other
 * path, which is then the API's to answer. The raw request path is used, before any
 * URL normalisation, so `/console/../package.json` stays under `/console/` and is a 404.
 */
export async function serveConsole(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
  if (req.method !== 'GET' && req.method !== 'HEAD') return false;
  const raw = (req.url ?? '/').split('?')[0]!;
  if (raw === '/' || raw === '/console') {
    plain(res, 302, `see ${CONSOLE_PREFIX}\n`, { location: CONSOLE_PREFIX });
    return true;
  }
  if (!raw.startsWith(CONSOLE_PREFIX)) return false;
  const name = raw === CONSOLE_PREFIX ? 'index.html' : raw.slice(CONSOLE_PREFIX.length);
  const type = Object.hasOwn(FILES, name) ? FILES[name] : undefined;
  if (type === undefined) {
    plain(res, 404, 'not found\n');
    return true;
  }
  let body: Buffer;
  try {
    body = await readFile(`${CONSOLE_DIR}${name}`);
  } catch {
    plain(res, 404, 'the console files are not installed\n');
    return true;
  }
  res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': type, 'content-length': body.length });
  res.end(req.method === 'HEAD' ? undefined : body);
  return true;
}
