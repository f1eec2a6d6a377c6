import { isIP } from 'node:net';
import { CoatcheckError } from '../../../core/errors.js';
import { MAX_TARGET_LENGTH } from './request-target.js';

/**
 * Forward-proxy request targets (RFC 9112 §3.2.2 absolute-form, §3.2.3 authority-form)
 * and the agent key in Proxy-Authorization (RFC 9110 §11.7.2; Basic per RFC 7617 with
 * any user name and the agent key as password, or Bearer). Pure parsing, no sockets.
 */
export interface Authority {
  /** Lower-cased host name or IP literal (no brackets). */
  readonly host: string;
  readonly port: number;
}

export interface AbsoluteTarget extends Authority {
  readonly scheme: 'http:' | 'https:';
  /** Raw path (at least '/'), without the query. */
  readonly path: string;
  readonly query: string | null;
}

const HOST_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/;

function bad(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_HTTP_BAD_REQUEST', message);
}

function hostOf(text: string): string {
  const lower = text.toLowerCase();
  if (lower.startsWith('[') && lower.endsWith(']')) {
    const inner = lower.slice(1, -1);
    if (isIP(inner) !== 6) throw bad('the proxy target host is not a valid IPv6 literal');
    return inner;
  }
  if (isIP(lower) === 4) return lower;
  if (lower.length > 253 || !HOST_RE.test(lower)) throw bad('the proxy target host is not a valid host name');
  return lower.replace(/\.$/, '');
}

function portOf(text: string): number {
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535)
    throw bad('the proxy target port is not a valid port');
  return Number(text);
}

/** `host:port` of a CONNECT request (the port is required). */
export function parseAuthority(raw: string): Authority {
  if (raw.length > 300) throw bad('the CONNECT target is too long');
  const colon = raw.lastIndexOf(':');
  if (colon <= 0) throw bad('CONNECT targets are host:port');
  return { host: hostOf(raw.slice(0, colon)), port: portOf(raw.slice(colon + 1)) };
}

/** An absolute-form target `http://host[:port]/path?query`. Dot segments are refused as in the reverse proxy. */
export function parseAbsoluteTarget(raw: string): AbsoluteTarget {
  if (raw.length > MAX_TARGET_LENGTH)
    throw bad(`the request target is longer than ${MAX_TARGET_LENGTH} bytes`);
  const match = /^(https?):\/\/([^/?#@]+)([^?#]*)(?:\?([^#]*))?$/i.exec(raw);
  if (match === null) {
    throw new CoatcheckError(
      'CC_ERR_HTTP_BAD_REQUEST',
      'forward-proxy requests use an absolute target (http://host/path); use CONNECT for https',
    );
  }
  const scheme = match[1]!.toLowerCase() === 'https' ? 'https:' : 'http:';
  const authority = match[2]!;
  const bracket = authority.lastIndexOf(']');
  const colon = authority.lastIndexOf(':');
  const hasPort = colon > bracket;
  const host = hostOf(hasPort ? authority.slice(0, colon) : authority);
  const port = hasPort ? portOf(authority.slice(colon + 1)) : scheme === 'https:' ? 443 : 80;
  const path = match[3] === '' ? '/' : match[3]!;
  for (const segment of path.split('/')) {
    const decoded = segment.replace(/%2e/gi, '.');
    if (decoded === '.' || decoded === '..' || /\\|%5c/i.test(segment))
      throw bad('the path may not contain dot segments or backslashes');
  }
  return { scheme, host, port, path, query: match[4] ?? null };
}

/** The origin for a host and port (`https://h` or `https://h:8443`, IPv6 in brackets). */
export function originOf(scheme: 'http:' | 'https:', target: Authority): string {
  const host = isIP(target.host) === 6 ? `[${target.host}]` : target.host;
  const standard = (scheme === 'https:' && target.port === 443) || (scheme === 'http:' && target.port === 80);
  return `${scheme}//${host}${standard ? '' : `:${target.port}`}`;
}

/**
 * The agent key from a Proxy-Authorization value: `Bearer <key>`, or `Basic` with any
 * user name and the key as password (for tools that only speak Basic: git, pip, curl
 * `--proxy-user`). Null when absent or malformed.
 */
export function proxyAgentKey(value: string | undefined): string | null {
  if (value === undefined) return null;
  const bearerMatch = /^\s*Bearer\s+(\S{1,512})\s*$/i.exec(value);
  if (bearerMatch !== null) return bearerMatch[1]!;
  const basic = /^\s*Basic\s+([A-Za-z0-9+/]{1,1024}={0,2})\s*$/i.exec(value);
  if (basic === null) return null;
  const decoded = Buffer.from(basic[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon === -1) return null;
  const password = decoded.slice(colon + 1);
  return password.length === 0 || password.length > 512 ? null : password;
}
