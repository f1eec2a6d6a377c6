import { CoatcheckError } from '../../../core/errors.js';

/**
 * Finding tickets in an HTTP request and putting secrets where they stood. Pure: text
 * in, text out, no sockets. Every function works on latin1 strings (one char per byte),
 * so bytes that are not tickets pass through exactly.
 *
 * Where a ticket may stand: any header value (also inside `Basic` credentials), the
 * query string (percent-encoded or not), URL path segments (percent-decoded), and
 * bodies — JSON (string literals decoded, so `\u0063ct_…` is found too), form-encoded,
 * and anything else (multipart included) as plain bytes. Each finding keeps its
 * placement (`placementOfHeader`): the vault releases a secret only in the placements
 * it is bound to.
 */

const TICKET_RE = /cct_[0-9A-Za-z]{28}/g;
const HAS_TICKET_RE = /cct_[0-9A-Za-z]{28}/;

/** Bytes of the secret a ticket stands for. */
export type SecretOf = (ticket: string) => Buffer;

export type BodyKind = 'json' | 'form' | 'text';

export function ticketsIn(text: string): string[] {
  return text.match(TICKET_RE) ?? [];
}

function latin1ToUtf8(text: string): string {
  return Buffer.from(text, 'latin1').toString('utf8');
}

function utf8ToLatin1(text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1');
}

/** Content-Type → how the body is searched. Unknown or absent types are searched as plain bytes. */
export function bodyKind(contentType: string | undefined): BodyKind {
  const type = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (type === 'application/json' || type.endsWith('+json')) return 'json';
  if (type === 'application/x-www-form-urlencoded') return 'form';
  return 'text';
}

// ---- headers ---------------------------------------------------------------------

const BASIC_RE = /^(\s*basic\s+)([A-Za-z0-9+/=]{1,8192})(\s*)$/i;

function basicCredentials(value: string): { prefix: string; decoded: string; suffix: string } | null {
  const match = BASIC_RE.exec(value);
  if (match === null) return null;
  return {
    prefix: match[1]!,
    decoded: Buffer.from(match[2]!, 'base64').toString('latin1'),
    suffix: match[3]!,
  };
}

export function headerTickets(value: string): string[] {
  const basic = basicCredentials(value);
  return basic === null ? ticketsIn(value) : [...ticketsIn(value), ...ticketsIn(basic.decoded)];
}

/** A header value may not hold CR, LF, NUL or other control characters (RFC 9110 §5.5). */
export function assertHeaderSafe(value: string): void {
  if (/[\0-\x08\x0a-\x1f\x7f]/.test(value)) {
    throw new CoatcheckError(
      'CC_ERR_HTTP_INJECTION_UNSAFE',
      'a released secret contains characters not allowed in an HTTP header',
    );
  }
}

export function substituteHeader(value: string, secretOf: SecretOf): string {
  const basic = basicCredentials(value);
  let out: string;
  if (basic !== null && HAS_TICKET_RE.test(basic.decoded)) {
    const decoded = basic.decoded.replace(TICKET_RE, (t) => secretOf(t).toString('latin1'));
    out = `${basic.prefix}${Buffer.from(decoded, 'latin1').toString('base64')}${basic.suffix}`;
  } else {
    out = value.replace(TICKET_RE, (t) => secretOf(t).toString('latin1'));
  }
  assertHeaderSafe(out);
  return out;
}

/**
 * A header's placement: `Authorization` is the credential position; every other header
 * (Cookie, X-Api-Key, …) is `header`, which a secret must be bound to explicitly.
 */
export function placementOfHeader(name: string): 'credential' | 'header' {
  return name.toLowerCase() === 'authorization' ? 'credential' : 'header';
}

// ---- URL paths ---------------------------------------------------------------------

/** Tickets in a raw path's segments, percent-decoded (so `%63ct_…` is found too). */
export function pathTickets(path: string): string[] {
  return path.split('/').flatMap((segment) => ticketsIn(formDecode(segment, false) ?? segment));
}

/** Put secrets where tickets stood in path segments (each such segment re-encoded); other segments pass as sent. */
export function substitutePath(path: string, secretOf: SecretOf): string {
  return path
    .split('/')
    .map((segment) => {
      const decoded = formDecode(segment, false);
      if (decoded === null)
        return segment.replace(TICKET_RE, (t) => formEncode(secretOf(t).toString('latin1')));
      if (!HAS_TICKET_RE.test(decoded)) return segment;
      return formEncode(decoded.replace(TICKET_RE, (t) => secretOf(t).toString('latin1')));
    })
    .join('/');
}

// ---- query strings and form bodies -----------------------------------------------

function formDecode(part: string, plusIsSpace: boolean): string | null {
  try {
    return utf8ToLatin1(decodeURIComponent(plusIsSpace ? part.replace(/\+/g, ' ') : part));
  } catch {
    return null;
  }
}

function formEncode(text: string): string {
  return encodeURIComponent(latin1ToUtf8(text));
}

/** Tickets in `a=b&c=d` text (query string or form body), percent-decoded. */
export function formTickets(text: string, plusIsSpace: boolean): string[] {
  const out: string[] = [];
  for (const pair of text.split('&')) {
    for (const part of pair.split('=')) {
      out.push(...ticketsIn(formDecode(part, plusIsSpace) ?? part));
    }
  }
  return out;
}

export function substituteForm(text: string, secretOf: SecretOf, plusIsSpace: boolean): string {
  return text
    .split('&')
    .map((pair) =>
      pair
        .split('=')
        .map((part) => {
          const decoded = formDecode(part, plusIsSpace);
          if (decoded === null)
            return part.replace(TICKET_RE, (t) => formEncode(secretOf(t).toString('latin1')));
          if (!HAS_TICKET_RE.test(decoded)) return part;
          return formEncode(decoded.replace(TICKET_RE, (t) => secretOf(t).toString('latin1')));
        })
        .join('='),
    )
    .join('&');
}

// ---- JSON --------------------------------------------------------------------------

/**
 * Call `fn` on every JSON string literal's decoded text that may hold a ticket (it
 * contains an escape or `cct_`), and splice the literal back re-encoded if `fn` changed
 * it. Text outside literals passes through `outside`. Works on invalid JSON too: an
 * unterminated literal is treated as outside text.
 */
function mapJsonStrings(
  text: string,
  fn: (decoded: string) => string,
  outside: (raw: string) => string,
): string {
  const parts: string[] = [];
  let at = 0;
  let from = 0;
  while (at < text.length) {
    const open = text.indexOf('"', at);
    if (open === -1) break;
    let close = open + 1;
    while (close < text.length && text.charCodeAt(close) !== 0x22)
      close += text.charCodeAt(close) === 0x5c ? 2 : 1;
    if (close >= text.length) break;
    const literal = text.slice(open, close + 1);
    if (literal.includes('\\') || literal.includes('cct_')) {
      let decoded: string | null = null;
      try {
        decoded = JSON.parse(latin1ToUtf8(literal)) as string;
      } catch {
        decoded = null;
      }
      if (decoded !== null) {
        const mapped = fn(decoded);
        if (mapped !== decoded) {
          parts.push(outside(text.slice(from, open)), utf8ToLatin1(JSON.stringify(mapped)));
          from = close + 1;
        }
      }
    }
    at = close + 1;
  }
  parts.push(outside(text.slice(from)));
  return parts.join('');
}

export function jsonTickets(text: string): string[] {
  const out: string[] = [];
  mapJsonStrings(
    text,
    (decoded) => {
      out.push(...ticketsIn(decoded));
      return decoded;
    },
    (raw) => {
      out.push(...ticketsIn(raw));
      return raw;
    },
  );
  return out;
}

export function substituteJson(text: string, secretOf: SecretOf): string {
  return mapJsonStrings(
    text,
    (decoded) => decoded.replace(TICKET_RE, (t) => secretOf(t).toString('utf8')),
    (raw) =>
      raw.replace(TICKET_RE, (t) => utf8ToLatin1(JSON.stringify(secretOf(t).toString('utf8')).slice(1, -1))),
  );
}

// ---- bodies ------------------------------------------------------------------------

export function bodyTickets(kind: BodyKind, body: string): string[] {
  if (kind === 'json') return jsonTickets(body);
  if (kind === 'form') return formTickets(body, true);
  return ticketsIn(body);
}

export function substituteBody(kind: BodyKind, body: string, secretOf: SecretOf): string {
  if (kind === 'json') return substituteJson(body, secretOf);
  if (kind === 'form') return substituteForm(body, secretOf, true);
  return body.replace(TICKET_RE, (t) => secretOf(t).toString('latin1'));
}
