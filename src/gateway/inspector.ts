/**
 * Response inspection: what comes back from an upstream is scanned before the agent
 * sees it, and every secret found is replaced by a fresh ticket. Front-ends drive a
 * `ResponseScan` (header values whole, body chunk by chunk); inspectors decide what a
 * finding is. The known-secret inspector below needs no detector; the detection engine
 * (src/detect) will plug in as another `ResponseInspector`.
 */

export interface InspectionContext {
  /** A ticket that stands for `secretId`, bound to the caller (one per secret per response). */
  reissue(secretId: string): Promise<string>;
  /**
   * A secret the vault did not know (a detector finding): register it and return a ticket
   * bound to the caller and to where the response came from.
   */
  tokenize?(value: Buffer, kind: string): Promise<string>;
}

export interface ResponseScan {
  /** Scan one complete header value (latin1, as HTTP carries it). */
  header(value: string): Promise<string>;
  /** Scan a body chunk; returns what may be sent now (a possible partial match is held back). */
  push(chunk: Buffer): Promise<Buffer>;
  /** End of body: the held-back tail, scanned. */
  end(): Promise<Buffer>;
  /** Secret ids replaced so far, with how many times (ids, never values). */
  readonly findings: ReadonlyMap<string, number>;
}

export interface ResponseInspector {
  readonly name: string;
  begin(context: InspectionContext): Promise<ResponseScan>;
}

/** Secrets shorter than this are not searched for in responses (they would match everywhere). */
export const MIN_SCANNED_SECRET_BYTES = 6;

export interface KnownSecret {
  readonly id: string;
  /** The raw value. Used only to build search patterns; never logged. */
  readonly value: Buffer;
}

interface Pattern {
  readonly secretId: string;
  readonly bytes: Buffer;
  /** The bytes that replace a match, given the ticket that replaces the secret. */
  readonly replace: (ticket: string) => Buffer;
}

export interface PatternSet {
  readonly patterns: readonly Pattern[];
  /** Longest pattern: the most a match can span across chunks. */
  readonly maxLength: number;
}

const EMPTY: PatternSet = { patterns: [], maxLength: 0 };

function jsonEscape(text: string): string {
  return JSON.stringify(text).slice(1, -1);
}

/** JSON with every non-ASCII character as \uXXXX (Python's default `ensure_ascii`). */
function jsonEscapeAscii(text: string): string {
  return jsonEscape(text).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/**
 * The base64 characters that depend only on `value` when it sits `offset` bytes (mod 3)
 * into a larger base64-encoded blob. Characters mixing neighbouring bytes are left out.
 */
function base64Fragment(value: Buffer, offset: number, alphabet: 'base64' | 'base64url'): string {
  const encoded = Buffer.concat([Buffer.alloc(offset), value]).toString(alphabet);
  const start = Math.ceil((offset * 8) / 6);
  const end = Math.floor(((offset + value.length) * 8) / 6);
  return encoded.slice(start, end);
}

/**
 * The replacement for a base64 fragment: the ticket framed by spaces so that the
 * characters kept around the match (which mix in neighbouring bytes) land on the spaces,
 * and padded so whatever follows in the blob keeps its alignment.
 */
function base64Replacement(
  ticket: string,
  secretLength: number,
  offset: number,
  alphabet: 'base64' | 'base64url',
) {
  const front = offset === 0 ? 0 : 1;
  let back = 1;
  while ((front + ticket.length + back - secretLength) % 3 !== 0) back++;
  const framed = Buffer.from(`${' '.repeat(front)}${ticket}${' '.repeat(back)}`);
  return Buffer.from(base64Fragment(framed, offset, alphabet));
}

/** Every encoding in which a known secret is searched for, with its replacement. */
export function buildPatterns(secrets: readonly KnownSecret[]): PatternSet {
  const patterns: Pattern[] = [];
  const seen = new Set<string>();
  const add = (secretId: string, text: string | Buffer, replace: (ticket: string) => Buffer) => {
    const bytes = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
    if (bytes.length < MIN_SCANNED_SECRET_BYTES) return;
    const key = `${secretId}\0${bytes.toString('base64')}`;
    if (seen.has(key)) return;
    seen.add(key);
    patterns.push({ secretId, bytes, replace });
  };
  for (const secret of secrets) {
    if (secret.value.length < MIN_SCANNED_SECRET_BYTES) continue;
    const plain = (ticket: string) => Buffer.from(ticket);
    add(secret.id, secret.value, plain);
    const text = secret.value.toString('utf8');
    if (Buffer.from(text, 'utf8').equals(secret.value)) {
      const json = jsonEscape(text);
      add(secret.id, json, plain);
      add(secret.id, json.replace(/\//g, '\\/'), plain);
      add(secret.id, jsonEscapeAscii(text), plain);
      add(
        secret.id,
        jsonEscapeAscii(text).replace(/\\u([0-9a-f]{4})/g, (_, hex: string) => `\\u${hex.toUpperCase()}`),
        plain,
      );
      const url = encodeURIComponent(text);
      add(secret.id, url, plain);
      add(secret.id, url.replace(/%20/g, '+'), plain);
      add(
        secret.id,
        url.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase()),
        plain,
      );
    }
    for (const alphabet of ['base64', 'base64url'] as const) {
      for (const offset of [0, 1, 2]) {
        add(secret.id, base64Fragment(secret.value, offset, alphabet), (ticket) =>
          base64Replacement(ticket, secret.value.length, offset, alphabet),
        );
      }
    }
  }
  return { patterns, maxLength: patterns.reduce((max, p) => Math.max(max, p.bytes.length), 0) };
}

interface Match {
  readonly start: number;
  readonly end: number;
  readonly pattern: Pattern;
}

/** Complete matches in `buf`, leftmost first, longest at a position, none overlapping. */
function findMatches(buf: Buffer, set: PatternSet): Match[] {
  const all: Match[] = [];
  for (const pattern of set.patterns) {
    let at = buf.indexOf(pattern.bytes);
    while (at !== -1) {
      all.push({ start: at, end: at + pattern.bytes.length, pattern });
      at = buf.indexOf(pattern.bytes, at + 1);
    }
  }
  if (all.length <= 1) return all;
  all.sort((a, b) => a.start - b.start || b.end - a.end);
  const chosen: Match[] = [];
  let last = 0;
  for (const match of all) {
    if (match.start < last) continue;
    chosen.push(match);
    last = match.end;
  }
  return chosen;
}

/** Where the longest suffix of `buf` (from `from` on) that could begin a pattern starts; `buf.length` if none. */
function holdFrom(buf: Buffer, from: number, set: PatternSet): number {
  let hold = buf.length;
  const floor = Math.max(from, buf.length - set.maxLength + 1);
  for (const pattern of set.patterns) {
    const first = pattern.bytes[0]!;
    let p = buf.indexOf(first, Math.max(floor, buf.length - pattern.bytes.length + 1));
    while (p !== -1 && p < hold) {
      const length = buf.length - p;
      if (length < pattern.bytes.length && buf.compare(pattern.bytes, 0, length, p, buf.length) === 0) {
        hold = p;
        break;
      }
      p = buf.indexOf(first, p + 1);
    }
  }
  return hold;
}

/**
 * A streaming scanner over one pattern set. Memory is bounded: besides the chunk in
 * hand it keeps at most `maxLength - 1` bytes (a possible match cut by a chunk border).
 */
export class PatternScan implements ResponseScan {
  readonly #set: PatternSet;
  readonly #context: InspectionContext;
  readonly #tickets = new Map<string, Promise<string>>();
  readonly #findings = new Map<string, number>();
  #tail: Buffer = Buffer.alloc(0);

  constructor(set: PatternSet, context: InspectionContext) {
    this.#set = set;
    this.#context = context;
  }

  get findings(): ReadonlyMap<string, number> {
    return this.#findings;
  }

  #ticketFor(secretId: string): Promise<string> {
    let ticket = this.#tickets.get(secretId);
    if (ticket === undefined) {
      ticket = this.#context.reissue(secretId);
      this.#tickets.set(secretId, ticket);
    }
    return ticket;
  }

  async #rewrite(buf: Buffer, matches: readonly Match[], until: number): Promise<Buffer> {
    if (matches.length === 0) return until === buf.length ? buf : buf.subarray(0, until);
    const parts: Buffer[] = [];
    let at = 0;
    for (const match of matches) {
      parts.push(buf.subarray(at, match.start));
      parts.push(match.pattern.replace(await this.#ticketFor(match.pattern.secretId)));
      this.#findings.set(match.pattern.secretId, (this.#findings.get(match.pattern.secretId) ?? 0) + 1);
      at = match.end;
    }
    parts.push(buf.subarray(at, until));
    return Buffer.concat(parts);
  }

  async #scan(buf: Buffer, final: boolean): Promise<{ out: Buffer; rest: Buffer }> {
    if (this.#set.patterns.length === 0) return { out: buf, rest: Buffer.alloc(0) };
    const matches = findMatches(buf, this.#set);
    const lastEnd = matches.at(-1)?.end ?? 0;
    const until = final ? buf.length : holdFrom(buf, lastEnd, this.#set);
    return { out: await this.#rewrite(buf, matches, until), rest: buf.subarray(until) };
  }

  async header(value: string): Promise<string> {
    const { out } = await this.#scan(Buffer.from(value, 'latin1'), true);
    return out.toString('latin1');
  }

  async push(chunk: Buffer): Promise<Buffer> {
    const buf = this.#tail.length === 0 ? chunk : Buffer.concat([this.#tail, chunk]);
    const { out, rest } = await this.#scan(buf, false);
    // Copy the tail: it must not pin the (possibly large) chunk it was cut from.
    this.#tail = Buffer.from(rest);
    return out;
  }

  async end(): Promise<Buffer> {
    const { out } = await this.#scan(this.#tail, true);
    this.#tail = Buffer.alloc(0);
    return out;
  }
}

/**
 * The known-secret inspector: every live vault secret, in every encoding listed in
 * `buildPatterns`. Patterns are rebuilt only when the vault's list changes.
 */
export function createKnownSecretInspector(
  knownSecrets: () => Promise<ReadonlyArray<{ id: string; value: { reveal(): Buffer } }>>,
): ResponseInspector {
  let cachedFor: unknown = null;
  let cached: PatternSet = EMPTY;
  return {
    name: 'known-secrets',
    async begin(context) {
      const secrets = await knownSecrets();
      if (secrets !== cachedFor) {
        cached = buildPatterns(secrets.map((s) => ({ id: s.id, value: s.value.reveal() })));
        cachedFor = secrets;
      }
      return new PatternScan(cached, context);
    },
  };
}
