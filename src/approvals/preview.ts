import { createHash } from 'node:crypto';
import type { SecretValue } from '../core/secret-value.js';
import { TICKET_PATTERN } from '../core/ticket-format.js';
import type { Detector } from '../detect/detector.js';
import type { KnownSecretMatcher } from '../detect/known-secrets.js';
import type { Finding } from '../detect/types.js';
import type { PatternSet } from '../gateway/inspector.js';

/**
 * The detector and the pattern builder load when the first preview is cleaned (a CLI
 * command that never builds one does not load the rules).
 */
const cleaningTools = async () => {
  const [{ createDetector }, { createKnownSecretMatcher }, { maskFor }, { buildPatterns, markOccurrences }] =
    await Promise.all([
      import('../detect/detector.js'),
      import('../detect/known-secrets.js'),
      import('../detect/scrub.js'),
      import('../gateway/inspector.js'),
    ]);
  return { createDetector, createKnownSecretMatcher, maskFor, buildPatterns, markOccurrences };
};
type CleaningTools = Awaited<ReturnType<typeof cleaningTools>>;

/**
 * The approver's preview of a held operation: the exact request (HTTP method, URL, headers
 * and body; a SQL statement and its parameters; an MCP tool and its arguments), cleaned
 * before it is stored or shown. Display only: the approval stays bound to the operation's
 * fingerprint (src/approvals/approvals.ts), never to this text.
 *
 * Cleaning, in this order, over the whole text (before any cut, so that no cut can leave
 * half a secret in clear):
 *   1. coatcheck keys (agent, subtask, admin, console session) → `[coatcheck key]`;
 *   2. tickets → `[ticket tkt_… for SECRET]` (or `[ticket <hash>]` when the store does not
 *      know it);
 *   3. every live vault secret, raw and in each encoding the response inspector searches
 *      for → `[secret:<id>]`;
 *   4. the detector (every secret rule, plus the known-secret matcher, which also decodes
 *      escaped forms: percent, JSON `\u`, HTML references) → `[secret:<id>]` or
 *      `[REDACTED:<rule>]`.
 * Then the text is cut at MAX_PREVIEW_BYTES with a visible marker.
 */

/** The most a stored preview holds (UTF-8 bytes, marker excluded). */
export const MAX_PREVIEW_BYTES = 64 * 1024;
/** How much of a preview an approvals list carries; the full text is one `approvals show` away. */
export const LIST_PREVIEW_CHARS = 400;

/** How a preview cut at MAX_PREVIEW_BYTES ends. */
export const PREVIEW_CUT_MARK = ' more bytes not kept]';

/** Builds the raw (uncleaned) preview text; called once, when an approval is requested. */
export type PreviewSource = () => string;

export interface PreviewVault {
  knownSecrets(): Promise<ReadonlyArray<{ readonly id: string; readonly value: SecretValue }>>;
  inspectTicket(ticket: string): Promise<{ readonly id: string; readonly secret: string | null }>;
}

/** Cleans raw preview text; resolves to the text to store. */
export type PreviewScrubber = (raw: string) => Promise<string>;

const KEY_PATTERN = /cc[as]_[0-9A-Za-z]{43}|cc[ku]_[0-9A-Za-z_-]{40,}/g;
/** Placeholders for markers while the text is scanned (private-use characters). */
const OPEN = '\ue000';
const CLOSE = '\ue001';
const PLACEHOLDER = /\ue000(\d+)\ue001/g;
const PLACEHOLDER_CHARS = /[\ue000\ue001]/g;
/** A text longer than this is cleaned by its head when that is enough (see the scrubber). */
const HEAD_CHARS = 512 * 1024;
/**
 * A bound on how much a replacement lengthens what it replaces (6 bytes of secret → a
 * 29-character marker; a rule's `[REDACTED:<id>]`, ids up to 34 characters), with room.
 */
const EXPANSION = 16;

interface Tools {
  readonly patterns: PatternSet;
  readonly detector: Detector;
  /** The longest live secret, in bytes. */
  readonly longest: number;
  readonly maskFor: (finding: Finding) => string;
  readonly markOccurrences: CleaningTools['markOccurrences'];
}

/** More distinct tickets than this in one preview are labelled by hash without a store lookup. */
const MAX_TICKET_LOOKUPS = 64;

/** A short, non-reversible label for a ticket the store does not know. */
function ticketLabel(ticket: string): string {
  return `[ticket ${createHash('sha256').update(ticket).digest('hex').slice(0, 12)}]`;
}

/** Cut `text` to MAX_PREVIEW_BYTES on a character boundary, saying how much was left out. */
export function boundPreview(text: string, notRead = 0): string {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= MAX_PREVIEW_BYTES && notRead === 0) return text;
  let end = Math.min(MAX_PREVIEW_BYTES, bytes.length);
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--; // not inside a UTF-8 sequence
  return `${bytes.subarray(0, end).toString('utf8')}\n[… truncated: ${bytes.length - end + notRead}${PREVIEW_CUT_MARK}`;
}

function replaceKnown(
  text: string,
  { patterns, markOccurrences }: Tools,
  mark: (label: string) => string,
): string {
  if (patterns.empty) return text;
  const bytes = Buffer.from(text, 'utf8');
  if (!patterns.mayContain(bytes)) return text;
  return (
    markOccurrences(bytes, patterns, (secretId) => mark(`[secret:${secretId}]`))?.toString('utf8') ?? text
  );
}

/** The shared known-secret index's patterns and matcher, current when resolved (refused while stale). */
export type CurrentKnownSecrets = () => Promise<{
  readonly patterns: PatternSet;
  readonly matcher: KnownSecretMatcher;
}>;

/**
 * With `known` (the gateway: the shared index, ADR 0021), a change to the vault costs the
 * preview nothing: the index applies it secret by secret. Without (tests, tools), one
 * pattern set and matcher are built per list of live secrets.
 */
export function createPreviewScrubber(vault: PreviewVault, known?: CurrentKnownSecrets): PreviewScrubber {
  // One pattern set and detector per list of live secrets (the vault hands back the same
  // array until a secret changes), or per index pattern set and matcher.
  const cache = new WeakMap<object, Tools>();
  const detectors = new WeakMap<object, Detector>();
  const toolsFor = async (): Promise<Tools> => {
    if (known !== undefined) {
      const { patterns, matcher } = await known();
      let tools = cache.get(patterns);
      if (tools === undefined) {
        const { createDetector, maskFor, markOccurrences } = await cleaningTools();
        let detector = detectors.get(matcher);
        if (detector === undefined) {
          detector = createDetector({ knownSecrets: matcher });
          detectors.set(matcher, detector);
        }
        // The longest pattern (a secret's longest encoding) bounds the longest secret.
        tools = { patterns, detector, longest: patterns.maxLength, maskFor, markOccurrences };
        cache.set(patterns, tools);
      }
      return tools;
    }
    return listTools();
  };
  const listTools = async () => {
    const known = await vault.knownSecrets();
    let tools = cache.get(known);
    if (tools === undefined) {
      const { createDetector, createKnownSecretMatcher, buildPatterns, markOccurrences, maskFor } =
        await cleaningTools();
      const matcher = createKnownSecretMatcher();
      const revealed = known.map((s) => ({ id: s.id, value: s.value.reveal() }));
      for (const s of revealed) {
        try {
          matcher.add(s.id, s.value);
        } catch (error) {
          // Under 8 bytes: the raw patterns (6 bytes and up) still find it. Anything else
          // (a value too large for the matcher) fails the cleaning: the preview is withheld.
          if ((error as { code?: unknown })?.code !== 'CC_ERR_DETECT_KNOWN_SECRET_TOO_SHORT') throw error;
        }
      }
      tools = {
        patterns: buildPatterns(revealed),
        detector: createDetector({ knownSecrets: matcher }),
        longest: revealed.reduce((m, s) => Math.max(m, s.value.length), 0),
        maskFor,
        markOccurrences,
      };
      cache.set(known, tools);
    }
    return tools;
  };
  const clean = async (raw: string, tools: Tools): Promise<string> => {
    const { detector, maskFor } = tools;
    // Markers are written as placeholders until the detector has run, so that it does not
    // take a marker (`[secret:sec_…]`) for a secret; the raw text cannot forge one.
    const labels: string[] = [];
    const mark = (label: string) => `${OPEN}${labels.push(label) - 1}${CLOSE}`;
    let text = raw.replace(PLACEHOLDER_CHARS, '\ufffd').replace(KEY_PATTERN, () => mark('[coatcheck key]'));
    const tickets = [...new Set(text.match(TICKET_PATTERN) ?? [])];
    if (tickets.length > 0) {
      const byTicket = new Map<string, string>();
      for (const [i, ticket] of tickets.entries()) {
        let label = ticketLabel(ticket);
        if (i < MAX_TICKET_LOOKUPS) {
          try {
            const view = await vault.inspectTicket(ticket);
            label = `[ticket ${view.id}${view.secret === null ? '' : ` for ${view.secret}`}]`;
          } catch {
            // Unknown or malformed: the hash label.
          }
        }
        byTicket.set(ticket, mark(label));
      }
      text = text.replace(TICKET_PATTERN, (t) => byTicket.get(t) ?? mark(ticketLabel(t)));
    }
    text = replaceKnown(text, tools, mark);
    const findings = detector.scan(text);
    if (findings.length > 0) {
      let out = '';
      let at = 0;
      for (const f of findings) {
        out += text.slice(at, f.start) + (f.secretId === undefined ? maskFor(f) : `[secret:${f.secretId}]`);
        at = f.end;
      }
      text = out + text.slice(at);
    }
    return text.replace(PLACEHOLDER, (_, index: string) => labels[Number(index)] ?? '');
  };
  return async (raw) => {
    const tools = await toolsFor();
    if (raw.length > HEAD_CHARS) {
      // A long text (an 8 MiB body): clean its head only, when that provably yields the
      // 64 KiB kept. A secret or finding cut at the end of the head can only have come from
      // its last `margin` characters, whose cleaned form is at most EXPANSION times longer
      // and comes last (replacements keep order): when what precedes it is already 64 KiB,
      // the kept text cannot reach it. Otherwise (the head shrank: many findings) clean all.
      const margin = 6 * tools.longest + tools.detector.maxMatchLength + 64;
      const head = await clean(raw.slice(0, HEAD_CHARS), tools);
      if (head.length - EXPANSION * margin >= MAX_PREVIEW_BYTES) {
        const rest = Buffer.byteLength(raw.slice(HEAD_CHARS));
        return boundPreview(head, rest);
      }
    }
    return boundPreview(await clean(raw, tools));
  };
}

/** A short form for lists: the first LIST_PREVIEW_CHARS characters. */
export function shortPreview(text: string): { text: string; truncated: boolean } {
  if (text.length <= LIST_PREVIEW_CHARS) return { text, truncated: false };
  return { text: `${text.slice(0, LIST_PREVIEW_CHARS)}…`, truncated: true };
}
