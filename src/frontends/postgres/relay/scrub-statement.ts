import { createHash } from 'node:crypto';
import { TICKET_PATTERN } from '../../../core/ticket-format.js';
import { createDetector, type Detector } from '../../../detect/detector.js';
import { maskFor } from '../../../detect/scrub.js';
import type { PatternSet } from '../../../gateway/inspector.js';

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
  let bytes = patterns.patterns.length > 0 ? Buffer.from(out, 'utf8') : null;
  if (bytes !== null && patterns.mayContain(bytes)) {
    for (const p of patterns.patterns) {
      if (bytes.indexOf(p.bytes) === -1) continue;
      const parts: Buffer[] = [];
      let last = 0;
      for (let at = bytes.indexOf(p.bytes); at !== -1; at = bytes.indexOf(p.bytes, last)) {
        parts.push(bytes.subarray(last, at), Buffer.from(`[secret:${p.secretId}]`));
        last = at + p.bytes.length;
      }
      parts.push(bytes.subarray(last));
      bytes = Buffer.concat(parts);
    }
    out = bytes.toString('utf8');
  }
  detector ??= createDetector();
  const findings = detector.scan(out);
  if (findings.length === 0) return out;
  let scrubbed = '';
  let at = 0;
  for (const f of findings) {
    scrubbed += out.slice(at, f.start) + maskFor(f);
    at = f.end;
  }
  return scrubbed + out.slice(at);
}
