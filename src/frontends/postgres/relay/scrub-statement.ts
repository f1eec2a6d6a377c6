import { createHash, randomBytes } from 'node:crypto';
import { TICKET_PATTERN } from '../../../core/ticket-format.js';
import { createDetector, type Detector } from '../../../detect/detector.js';
import { maskFor } from '../../../detect/scrub.js';
import { markOccurrences, type PatternSet } from '../../../gateway/inspector.js';

let detector: Detector | null = null;

/** A short, non-reversible label for a ticket whose id is not known yet. */
export function ticketLabel(ticket: string): string {
  return `[ticket ${createHash('sha256').update(ticket).digest('hex').slice(0, 12)}]`;
}

/**
 * Statement text fit for an audit record or an approver: tickets become their ids (or a
 * hash label), every known vault secret (in each encoding the inspector searches for)
 * becomes `[secret:<id>]`, and every detector finding becomes `[REDACTED:<rule>]`.
 */
export function scrubStatement(
  text: string,
  patterns: PatternSet,
  ticketIds: ReadonlyMap<string, string> = new Map(),
): string {
  let out = text.includes('cct_')
    ? text.replace(TICKET_PATTERN, (t) => ticketIds.get(t) ?? ticketLabel(t))
    : text;
  // One indexed pass decides whether any known secret is there at all (the common case: no).
  // A found secret becomes a placeholder first and its `[secret:<id>]` marker only after the
  // detector ran: the detector reads `secret:sec_…` as a keyword and a value, and would mask
  // the marker (losing the id). The placeholder carries a per-call random tag, so text the
  // agent wrote cannot pose as one.
  let secretIds: string[] | null = null;
  let tag = '';
  const bytes = patterns.empty ? null : Buffer.from(out, 'utf8');
  if (bytes !== null && patterns.mayContain(bytes)) {
    const ids: string[] = [];
    tag = randomBytes(6).toString('hex');
    const marked = markOccurrences(bytes, patterns, (secretId) => {
      ids.push(secretId);
      return `${PLACEHOLDER_OPEN}${tag}:${ids.length - 1}${PLACEHOLDER_CLOSE}`;
    });
    if (marked !== null) out = marked.toString('utf8');
    secretIds = ids;
  }
  detector ??= createDetector();
  const findings = detector.scan(out);
  const placeholder =
    secretIds === null ? null : new RegExp(`${PLACEHOLDER_OPEN}${tag}:(\\d+)${PLACEHOLDER_CLOSE}`, 'g');
  let scrubbed = out;
  if (findings.length > 0) {
    scrubbed = '';
    let at = 0;
    for (const f of findings) {
      const span = out.slice(f.start, f.end);
      // A keyword rule (`password = '…'`) that matched only because a placeholder stands
      // where the known secret was: the placeholder already hides it, and keeps its id.
      const onlyPlaceholders =
        placeholder !== null &&
        span.includes(PLACEHOLDER_OPEN) &&
        !/[A-Za-z0-9]/.test(span.replace(placeholder, ''));
      scrubbed += out.slice(at, f.start) + (onlyPlaceholders ? span : maskFor(f));
      at = f.end;
    }
    scrubbed += out.slice(at);
  }
  if (placeholder === null || secretIds === null) return scrubbed;
  const ids = secretIds;
  return scrubbed.replace(placeholder, (_, n: string) => `[secret:${ids[Number(n)]}]`);
}

// Private-use characters: no detector rule reads them as part of a secret.
const PLACEHOLDER_OPEN = '\uE000';
const PLACEHOLDER_CLOSE = '\uE001';
