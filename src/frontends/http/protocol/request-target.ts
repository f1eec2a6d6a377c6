import { CoatcheckError } from '../../../core/errors.js';

/**
 * The reverse-proxy request target: `/c/<connection>/<path>?<query>`. Pure parsing;
 * the raw path and query are kept byte-for-byte (no normalisation that could change
 * what the upstream sees), but dot segments are refused so a path cannot climb out of
 * the connection's base path.
 */
export interface RouteTarget {
  readonly connection: string;
  /** Raw path below the connection (`/repos/x`), or '' for the connection root. */
  readonly path: string;
  /** Raw query without '?', or null. */
  readonly query: string | null;
}

const ROUTE_RE = /^\/c\/([A-Za-z0-9][A-Za-z0-9_-]{0,62})(\/[^?#]*)?$/;
export const MAX_TARGET_LENGTH = 8192;

function bad(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_HTTP_BAD_REQUEST', message);
}

export function parseRouteTarget(raw: string): RouteTarget {
  if (raw.length > MAX_TARGET_LENGTH)
    throw bad(`the request target is longer than ${MAX_TARGET_LENGTH} bytes`);
  if (!raw.startsWith('/')) {
    throw new CoatcheckError(
      'CC_ERR_HTTP_UNSUPPORTED',
      'absolute-form request targets (forward proxying) are not served; send /c/<connection>/<path>',
    );
  }
  const q = raw.indexOf('?');
  const pathPart = q === -1 ? raw : raw.slice(0, q);
  const query = q === -1 ? null : raw.slice(q + 1);
  const match = ROUTE_RE.exec(pathPart);
  if (match === null) throw bad('requests must go to /c/<connection>/<path>');
  const path = match[2] ?? '';
  for (const segment of path.split('/')) {
    const decoded = segment.replace(/%2e/gi, '.');
    if (decoded === '.' || decoded === '..' || /\\|%5c/i.test(segment)) {
      throw bad('the path may not contain dot segments or backslashes');
    }
  }
  return { connection: match[1]!, path, query };
}

/** The upstream path: the connection's base path joined with the path below it. */
export function upstreamPath(basePath: string, target: RouteTarget): string {
  const base = basePath.endsWith('/') ? basePath.slice(0, -1) : basePath;
  const path = `${base}${target.path}` || '/';
  return target.query === null ? path : `${path}?${target.query}`;
}

/** A path fit for audit and recordings: bounded, with anything ticket- or key-shaped masked. */
export function scrubPath(path: string): string {
  const masked = path.replace(/cc[ta]_[0-9A-Za-z]{20,}/g, (m) => `${m.slice(0, 4)}…`);
  return masked.length > 512 ? `${masked.slice(0, 512)}…` : masked;
}
