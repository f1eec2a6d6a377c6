import { createDetector, type Detector, type DetectorOptions, keywordIndexFor } from '../detect/detector.js';
import type { Finding } from '../detect/types.js';
import type { InspectionContext, ResponseInspector, ResponseScan } from './inspector.js';

/**
 * Secrets the vault does not know yet: the detection engine's rules run over every
 * response (headers whole, body streamed with a bounded overlap), and each finding is
 * registered in the vault and replaced by a ticket bound to the caller and to where it
 * came from (`InspectionContext.tokenize`). Runs after the known-secret inspector, so
 * vault secrets are already tickets by the time it looks. Bodies are released line by
 * line (see `safeBoundary`), so streams keep flowing while nothing is sent unscanned.
 */
export function createDetectorInspector(options: DetectorOptions = {}): ResponseInspector {
  const detector: Detector = createDetector(options);
  // Every rule needs one of its keywords in the text (and no vault secret is matched here):
  // a header block with no keyword has no finding in any of its values, which one pass of
  // the keyword automaton over the block shows. Otherwise each value is scanned alone.
  const gated =
    options.knownSecrets === undefined && detector.rules.every((rule) => rule.keywords.length > 0);
  const keywords = gated ? keywordIndexFor([...new Set(detector.rules.flatMap((r) => r.keywords))]) : null;

  return {
    name: 'detector',
    async begin(context: InspectionContext): Promise<ResponseScan> {
      const tokenize = context.tokenize;
      if (tokenize === undefined) throw new Error('the detector inspector needs InspectionContext.tokenize');
      const findings = new Map<string, number>();
      // Bytes not yet sent, and the last bytes sent (context for rules that look behind).
      let pending: Buffer = Buffer.alloc(0);
      let sentTail: Buffer = Buffer.alloc(0);
      // Chunks received since the last release (pending's bytes first), joined only when
      // something may be released.
      let held: Buffer[] = [];
      let heldLength = 0;
      let heldNewline = false;
      const collect = (): void => {
        pending = held.length === 1 ? held[0]! : Buffer.concat(held, heldLength);
      };

      const replace = async (value: Buffer, finding: Finding): Promise<Buffer> => {
        const ticket = await tokenize(value, finding.ruleId);
        findings.set(finding.ruleId, (findings.get(finding.ruleId) ?? 0) + 1);
        return Buffer.from(ticket, 'latin1');
      };

      /** Send pending[0, boundary) — further if a finding starting before it runs past it. */
      const release = async (boundary: number): Promise<Buffer> => {
        const text = sentTail.length === 0 ? pending : Buffer.concat([sentTail, pending]);
        const offset = sentTail.length;
        let limit = boundary;
        let position = 0;
        const parts: Buffer[] = [];
        for (const finding of detector.scan(text).sort((a, b) => a.start - b.start)) {
          const start = finding.start - offset;
          const end = finding.end - offset;
          // Starts in bytes already sent (seen as context only), or after what we send now.
          if (start < position || start >= limit) continue;
          limit = Math.max(limit, end);
          parts.push(pending.subarray(position, start), await replace(pending.subarray(start, end), finding));
          position = end;
        }
        parts.push(pending.subarray(position, limit));
        const sent = pending.subarray(0, limit);
        sentTail = Buffer.from(sent.subarray(Math.max(0, sent.length - LOOKBEHIND)));
        pending = Buffer.from(pending.subarray(limit));
        return Buffer.concat(parts);
      };

      const scan: ResponseScan = {
        findings,
        async headers(values) {
          if (keywords !== null && !keywords.has(Buffer.from(values.join('\n'), 'latin1')))
            return [...values];
          const out: string[] = [];
          for (const value of values) out.push(await scan.header(value));
          return out;
        },
        async header(value) {
          const found = detector.scan(value);
          if (found.length === 0) return value;
          let out = '';
          let position = 0;
          for (const finding of found.sort((a, b) => a.start - b.start)) {
            if (finding.start < position) continue;
            out += value.slice(position, finding.start);
            out += (
              await replace(Buffer.from(value.slice(finding.start, finding.end), 'latin1'), finding)
            ).toString('latin1');
            position = finding.end;
          }
          return out + value.slice(position);
        },
        async push(chunk) {
          // Nothing can go out before a line feed arrives or the held line grows past
          // MAX_HELD_LINE (safeBoundary would say 0): keep the chunk aside without copying or
          // scanning. Small chunks (a stream carried over HTTP/2, TLS records) made both
          // happen to the held bytes once per chunk.
          held.push(chunk);
          heldLength += chunk.length;
          heldNewline ||= chunk.includes(0x0a);
          if (!heldNewline && heldLength <= MAX_HELD_LINE) return EMPTY;
          collect();
          const boundary = safeBoundary(pending, detector.maxMatchLength);
          const out = boundary === 0 ? EMPTY : await release(boundary);
          held = pending.length === 0 ? [] : [pending];
          heldLength = pending.length;
          heldNewline = pending.includes(0x0a);
          return out;
        },
        async end() {
          collect();
          return pending.length === 0 ? Buffer.alloc(0) : release(pending.length);
        },
      };
      return scan;
    },
  };
}

const EMPTY = Buffer.alloc(0);

/** Bytes of already-sent text kept as context (`password=` before a value, a key name). */
const LOOKBEHIND = 256;
/** A line longer than this is released in pieces, keeping the longest match held back. */
const MAX_HELD_LINE = 64 * 1024;

/**
 * How much of `pending` can be sent now. Secrets do not span lines (PEM blocks excepted),
 * so complete lines go out at once — server-sent events and log streams are not delayed —
 * while the unfinished last line, or an unfinished PEM block, is held until it completes.
 */
export function safeBoundary(pending: Buffer, maxMatch: number): number {
  let boundary = pending.lastIndexOf(0x0a) + 1;
  const begin = pending.lastIndexOf('-----BEGIN');
  if (begin !== -1 && begin < boundary && pending.indexOf('-----END', begin) === -1) boundary = begin;
  if (boundary === 0 && pending.length > MAX_HELD_LINE) boundary = pending.length - maxMatch;
  if (begin !== -1 && boundary === begin && pending.length - begin > MAX_HELD_LINE)
    boundary = pending.length - maxMatch;
  return Math.max(0, boundary);
}

/** A header block through `scan`: in one pass where it can, else value by value. */
export async function scanHeaders(scan: ResponseScan, values: readonly string[]): Promise<string[]> {
  if (scan.headers !== undefined) return scan.headers(values);
  const out: string[] = [];
  for (const value of values) out.push(await scan.header(value));
  return out;
}

/** Run inspectors one after another over the same response (output of one feeds the next). */
export function chainInspectors(...inspectors: ResponseInspector[]): ResponseInspector {
  return {
    name: inspectors.map((i) => i.name).join('+'),
    async begin(context) {
      const scans = await Promise.all(inspectors.map((i) => i.begin(context)));
      const findings = new Map<string, number>();
      const merge = () => {
        findings.clear();
        for (const scan of scans)
          for (const [id, n] of scan.findings) findings.set(id, (findings.get(id) ?? 0) + n);
      };
      return {
        findings,
        async header(value) {
          let out = value;
          for (const scan of scans) out = await scan.header(out);
          merge();
          return out;
        },
        async headers(values) {
          let out = [...values];
          for (const scan of scans) out = await scanHeaders(scan, out);
          merge();
          return out;
        },
        async push(chunk) {
          let out = chunk;
          for (const scan of scans) out = out.length === 0 ? out : await scan.push(out);
          merge();
          return out;
        },
        async end() {
          // Each stage's tail goes through the stages after it, then those stages end.
          let carry: Buffer = Buffer.alloc(0);
          for (const scan of scans) {
            const pushed = carry.length === 0 ? Buffer.alloc(0) : await scan.push(carry);
            carry = Buffer.concat([pushed, await scan.end()]);
          }
          merge();
          return carry;
        },
      };
    },
  };
}
