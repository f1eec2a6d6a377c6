import { CoatcheckError } from '../core/errors.js';

/**
 * A destination says where a secret may be released: a connection (by name) or a host
 * pattern. Stored canonically as `conn:NAME` or `host:PATTERN`.
 *
 * Input forms: `github` (no dot: a connection name), `conn:github`, `api.example.com`,
 * `*.example.com`, `api.example.com:8443`, `host:localhost` (a bare name with no dot is
 * a connection unless prefixed with `host:`).
 */
export type Destination =
  | { readonly kind: 'conn'; readonly name: string }
  | {
      readonly kind: 'host';
      readonly wildcard: boolean;
      readonly host: string;
      readonly port: number | null;
    };

/** Where an exchange is going, as the front-end sees it. */
export interface Target {
  readonly connection?: string | undefined;
  readonly host?: string | undefined;
  readonly port?: number | undefined;
}

const CONNECTION_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const LABEL_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const MAX_DEST_LENGTH = 260;

function invalid(field: string): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_DEST_INVALID',
    `${field} is neither a connection name nor a host pattern (like api.example.com or *.example.com)`,
    { details: { field } },
  );
}

export function isConnectionName(name: string): boolean {
  return CONNECTION_NAME_RE.test(name);
}

function parseHostPattern(text: string, field: string): Destination {
  let rest = text.toLowerCase();
  let port: number | null = null;
  const colon = rest.lastIndexOf(':');
  if (colon !== -1) {
    const portText = rest.slice(colon + 1);
    if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535)
      throw invalid(field);
    port = Number(portText);
    rest = rest.slice(0, colon);
  }
  let wildcard = false;
  if (rest.startsWith('*.')) {
    wildcard = true;
    rest = rest.slice(2);
  }
  if (rest.length === 0 || rest.length > 253) throw invalid(field);
  const labels = rest.split('.');
  if (!labels.every((label) => LABEL_RE.test(label))) throw invalid(field);
  // `*.com` would release a secret to most of the internet: require two labels under a wildcard.
  if (wildcard && labels.length < 2) throw invalid(field);
  return { kind: 'host', wildcard, host: rest, port };
}

export function parseDestination(text: string, field = 'destination'): Destination {
  if (typeof text !== 'string' || text.length === 0 || text.length > MAX_DEST_LENGTH) throw invalid(field);
  if (text.startsWith('conn:')) {
    const name = text.slice(5);
    if (!isConnectionName(name)) throw invalid(field);
    return { kind: 'conn', name };
  }
  if (text.startsWith('host:')) return parseHostPattern(text.slice(5), field);
  if (!text.includes('.') && !text.includes(':') && isConnectionName(text))
    return { kind: 'conn', name: text };
  return parseHostPattern(text, field);
}

export function formatDestination(dest: Destination): string {
  if (dest.kind === 'conn') return `conn:${dest.name}`;
  return `host:${dest.wildcard ? '*.' : ''}${dest.host}${dest.port === null ? '' : `:${dest.port}`}`;
}

/** Parse and canonicalise a list, dropping duplicates, keeping order. */
export function normalizeDestinations(texts: readonly string[], field = 'destination'): string[] {
  const out: string[] = [];
  for (const text of texts) {
    const canonical = formatDestination(parseDestination(text, field));
    if (!out.includes(canonical)) out.push(canonical);
  }
  return out;
}

function hostCovers(outer: string, outerWildcard: boolean, inner: string, innerWildcard: boolean): boolean {
  if (!outerWildcard) return !innerWildcard && outer === inner;
  // `*.s` covers any host strictly below s, and any pattern `*.t` where t is s or below s.
  if (innerWildcard) return inner === outer || inner.endsWith(`.${outer}`);
  return inner.endsWith(`.${outer}`);
}

/** Does `outer` allow everything `inner` allows? (Used to keep tickets within their secret and parent.) */
export function covers(outer: Destination, inner: Destination): boolean {
  if (outer.kind === 'conn' || inner.kind === 'conn') {
    return outer.kind === 'conn' && inner.kind === 'conn' && outer.name === inner.name;
  }
  if (outer.port !== null && outer.port !== inner.port) return false;
  return hostCovers(outer.host, outer.wildcard, inner.host, inner.wildcard);
}

export function coveredByAny(outers: readonly Destination[], inner: Destination): boolean {
  return outers.some((outer) => covers(outer, inner));
}

/** Does destination `dest` permit a release to `target`? */
export function matchesTarget(dest: Destination, target: Target): boolean {
  if (dest.kind === 'conn') return target.connection !== undefined && target.connection === dest.name;
  if (target.host === undefined) return false;
  const host = target.host.toLowerCase().replace(/\.$/, '');
  if (dest.port !== null && dest.port !== target.port) return false;
  return dest.wildcard ? host.endsWith(`.${dest.host}`) : host === dest.host;
}

export function describeTarget(target: Target): string {
  const parts: string[] = [];
  if (target.connection !== undefined) parts.push(`connection ${target.connection}`);
  if (target.host !== undefined)
    parts.push(`host ${target.host}${target.port === undefined ? '' : `:${target.port}`}`);
  return parts.join(', ') || 'no destination';
}
