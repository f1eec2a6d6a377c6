import { CoatcheckError } from '../core/errors.js';

/**
 * A destination says where a secret may be released: a connection (by name) or a host
 * pattern bound to a scheme and a port. Stored canonically as `conn:NAME` or
 * `host:[http://][*.]HOST[:PORT]`: the scheme is written only when it is `http` and the
 * port only when it is not the scheme's default, so `host:api.example.com` means
 * `https://api.example.com:443` and nothing else.
 *
 * Input forms: `github` (no dot: a connection name), `conn:github`, `api.example.com`,
 * `https://api.example.com:8443`, `*.example.com`, `api.example.com:8443`,
 * `http://localhost:8080`, `host:localhost` (a bare name with no dot is a connection
 * unless prefixed with `host:` or a scheme). `http://` is accepted for loopback hosts
 * only, unless the caller passes `allowPlaintext` (`secret add --allow-plaintext`).
 */
export type Scheme = 'https' | 'http';

export type Destination =
  | { readonly kind: 'conn'; readonly name: string }
  | {
      readonly kind: 'host';
      readonly scheme: Scheme;
      readonly wildcard: boolean;
      readonly host: string;
      readonly port: number;
    };

/** Where an exchange is going, as the front-end sees it. */
export interface Target {
  readonly connection?: string | undefined;
  /** `https` or `http` for HTTP front-ends; absent where the protocol has no URL scheme (PostgreSQL). */
  readonly scheme?: Scheme | undefined;
  readonly host?: string | undefined;
  readonly port?: number | undefined;
}

export interface ParseOptions {
  /** Accept `http://` to hosts other than loopback (`--allow-plaintext`). */
  readonly allowPlaintext?: boolean;
}

const CONNECTION_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const LABEL_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const MAX_DEST_LENGTH = 260;

export function defaultPort(scheme: Scheme): number {
  return scheme === 'https' ? 443 : 80;
}

function invalid(field: string): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_DEST_INVALID',
    `${field} is neither a connection name nor a host pattern (like api.example.com, https://api.example.com:8443 or *.example.com)`,
    { details: { field } },
  );
}

export function isConnectionName(name: string): boolean {
  return CONNECTION_NAME_RE.test(name);
}

/** `localhost`, `*.localhost` and 127.0.0.0/8: traffic that never leaves the machine. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return (
    h === 'localhost' ||
    h.endsWith('.localhost') ||
    h === '::1' ||
    /^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$/.test(h)
  );
}

function parseHostPattern(text: string, field: string, options: ParseOptions): Destination {
  let rest = text.toLowerCase();
  let scheme: Scheme = 'https';
  let explicitScheme = false;
  const schemeMatch = /^(https?):\/\//.exec(rest);
  if (schemeMatch !== null) {
    scheme = schemeMatch[1] as Scheme;
    explicitScheme = true;
    rest = rest.slice(schemeMatch[0].length);
    // A bare trailing slash is the origin; any other path is not a destination.
    if (rest.endsWith('/')) rest = rest.slice(0, -1);
  }
  let port = defaultPort(scheme);
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
  if (wildcard && labels.length < 2 && rest !== 'localhost') throw invalid(field);
  if (scheme === 'http' && explicitScheme && !options.allowPlaintext && !isLoopbackHost(rest)) {
    throw new CoatcheckError(
      'CC_ERR_DEST_PLAINTEXT',
      `${field} names http:// to ${wildcard ? '*.' : ''}${rest}, which is not a loopback host; secrets go over TLS unless --allow-plaintext says otherwise`,
      { details: { field } },
    );
  }
  return { kind: 'host', scheme, wildcard, host: rest, port };
}

/**
 * Parse one destination. Without options `http://` is accepted anywhere: that is how
 * stored (already checked) destinations are read. A secret's destinations are checked
 * with `{ allowPlaintext: false }` when it is added (`Vault.addSecret`).
 */
export function parseDestination(
  text: string,
  field = 'destination',
  options: ParseOptions = { allowPlaintext: true },
): Destination {
  if (typeof text !== 'string' || text.length === 0 || text.length > MAX_DEST_LENGTH) throw invalid(field);
  if (text.startsWith('conn:')) {
    const name = text.slice(5);
    if (!isConnectionName(name)) throw invalid(field);
    return { kind: 'conn', name };
  }
  if (text.startsWith('host:')) return parseHostPattern(text.slice(5), field, options);
  if (!text.includes('.') && !text.includes(':') && isConnectionName(text))
    return { kind: 'conn', name: text };
  return parseHostPattern(text, field, options);
}

export function formatDestination(dest: Destination): string {
  if (dest.kind === 'conn') return `conn:${dest.name}`;
  const scheme = dest.scheme === 'http' ? 'http://' : '';
  const port = dest.port === defaultPort(dest.scheme) ? '' : `:${dest.port}`;
  return `host:${scheme}${dest.wildcard ? '*.' : ''}${dest.host}${port}`;
}

/**
 * Parse and canonicalise a list, dropping duplicates, keeping order. A secret's own
 * destinations are read with `{ allowPlaintext: false }` unless the operator said
 * `--allow-plaintext`; ticket destinations (always checked to lie within the secret's)
 * are read as they are.
 */
export function normalizeDestinations(
  texts: readonly string[],
  field = 'destination',
  options: ParseOptions = { allowPlaintext: true },
): string[] {
  const out: string[] = [];
  for (const text of texts) {
    const canonical = formatDestination(parseDestination(text, field, options));
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
  if (outer.scheme !== inner.scheme || outer.port !== inner.port) return false;
  return hostCovers(outer.host, outer.wildcard, inner.host, inner.wildcard);
}

export function coveredByAny(outers: readonly Destination[], inner: Destination): boolean {
  return outers.some((outer) => covers(outer, inner));
}

/**
 * Does destination `dest` permit a release to `target`? A host destination binds scheme,
 * host and port: `https://api.example.com:443` does not match `http://api.example.com:80`
 * nor port 8443. A target without a scheme (a protocol with no URL scheme, PostgreSQL)
 * matches on host and port.
 */
export function matchesTarget(dest: Destination, target: Target): boolean {
  if (dest.kind === 'conn') return target.connection !== undefined && target.connection === dest.name;
  if (target.host === undefined || target.port === undefined) return false;
  if (target.scheme !== undefined && target.scheme !== dest.scheme) return false;
  const host = target.host.toLowerCase().replace(/\.$/, '');
  if (dest.port !== target.port) return false;
  return dest.wildcard ? host.endsWith(`.${dest.host}`) : host === dest.host;
}

export function describeTarget(target: Target): string {
  const parts: string[] = [];
  if (target.connection !== undefined) parts.push(`connection ${target.connection}`);
  if (target.host !== undefined)
    parts.push(
      `host ${target.scheme === undefined ? '' : `${target.scheme}://`}${target.host}${target.port === undefined ? '' : `:${target.port}`}`,
    );
  return parts.join(', ') || 'no destination';
}
