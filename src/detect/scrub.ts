import { Transform, type TransformCallback } from 'node:stream';
import { CoatcheckError } from '../core/errors.js';
import { createDetector, type Detector, type DetectorOptions } from './detector.js';
import type { Finding } from './types.js';

/** Returns the text that replaces a finding (a ticket, usually). Receives the raw value once. */
export type TokenizeFn = (finding: Finding, value: string) => Promise<string> | string;

export interface ScrubOptions extends DetectorOptions {
  /** A detector to reuse (its options win over the ones given here). */
  readonly detector?: Detector;
}

/** The mask written in place of a finding. */
export function maskFor(finding: Finding): string {
  return `[REDACTED:${finding.ruleId}]`;
}

function detectorOf(options: ScrubOptions): Detector {
  return options.detector ?? createDetector(options);
}

function replaceSpans(text: string, findings: readonly Finding[], replacements: readonly string[]): string {
  if (findings.length === 0) return text;
  let out = '';
  let at = 0;
  findings.forEach((f, i) => {
    out += text.slice(at, f.start) + replacements[i];
    at = f.end;
  });
  return out + text.slice(at);
}

/** Masks every finding: `[REDACTED:<rule-id>]`. */
export function scrubText(text: string, options: ScrubOptions = {}): string {
  const findings = detectorOf(options).scan(text);
  return replaceSpans(text, findings, findings.map(maskFor));
}

/**
 * Replaces every finding with what `tokenize` returns (the vault registers the value and
 * returns a ticket). Fails closed: if `tokenize` fails, CC_ERR_DETECT_TOKENIZE_FAILED is
 * thrown and no text is returned.
 */
export async function tokenizeText(
  text: string,
  tokenize: TokenizeFn,
  options: ScrubOptions = {},
): Promise<{ text: string; findings: Finding[] }> {
  const findings = detectorOf(options).scan(text);
  const replacements: string[] = [];
  for (const f of findings) {
    try {
      replacements.push(await tokenize(f, text.slice(f.start, f.end)));
    } catch (cause) {
      throw new CoatcheckError(
        'CC_ERR_DETECT_TOKENIZE_FAILED',
        `tokenize failed for a ${f.ruleId} finding (fingerprint ${f.fingerprint})`,
        { cause, details: { rule: f.ruleId, fingerprint: f.fingerprint } },
      );
    }
  }
  return { text: replaceSpans(text, findings, replacements), findings };
}

/** What a withheld field's value becomes in a line scrubbed conservatively. */
export const WITHHELD = '[withheld: known secrets not loaded]';

/**
 * A log line kept to what cannot carry a vault secret: `level`, `time`, `service`, the
 * message (scrubbed by the detector's rules), a `CC_ERR_` code, booleans and small numbers;
 * every other value is withheld. A line that is not a JSON object is withheld whole.
 */
function conservativeLine(line: string, scrub: (text: string) => string): string {
  const newline = line.endsWith('\n') ? '\n' : '';
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    parsed = null;
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    return `${JSON.stringify({ level: 50, msg: 'log line withheld: the known secrets to mask are not loaded' })}${newline}`;
  }
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (key === 'level' || key === 'time' || key === 'service') out[key] = value;
    else if (key === 'msg' && typeof value === 'string') out[key] = scrub(value);
    else if (typeof value === 'string' && /^CC_ERR_[A-Z0-9_]{1,64}$/.test(value)) out[key] = value;
    else if (typeof value === 'boolean' || value === null) out[key] = value;
    // Up to 7 digits: shorter than any known secret (8 bytes at least).
    else if (typeof value === 'number' && Number.isInteger(value) && Math.abs(value) < 10_000_000)
      out[key] = value;
    else out[key] = WITHHELD;
  }
  out.scrub = 'conservative';
  return `${JSON.stringify(out)}${newline}`;
}

/**
 * A hook for loggers: masks findings in one line. Reuses one detector; a line with no
 * keyword in it costs one pass of the keyword automaton. While `stale()` says the known
 * secrets the detector looks for may be incomplete (the index could not apply a change),
 * lines are scrubbed conservatively (fail closed): only fields that cannot carry a secret
 * are kept.
 */
export function createLogScrubber(
  options: ScrubOptions & { readonly stale?: () => boolean } = {},
): (line: string) => string {
  const detector = detectorOf(options);
  const scrub = (text: string) => {
    const findings = detector.scan(text);
    return findings.length === 0 ? text : replaceSpans(text, findings, findings.map(maskFor));
  };
  const stale = options.stale;
  return (line) => (stale?.() === true ? conservativeLine(line, scrub) : scrub(line));
}

export interface ScrubTransformOptions extends ScrubOptions {
  /** Replace findings with tickets instead of masks. */
  readonly tokenize?: TokenizeFn;
  /** A line longer than this is processed in pieces of this size (default 1 MiB). */
  readonly maxLineLength?: number;
}

/**
 * A line-oriented Transform for log pipelines: every complete line is scrubbed and written
 * at once (so `tail -f | coatcheck scrub` shows lines as they come). Input is UTF-8.
 */
export function createScrubTransform(options: ScrubTransformOptions = {}): Transform {
  const detector = detectorOf(options);
  const maxLine = options.maxLineLength ?? 1024 * 1024;
  const tokenize = options.tokenize;
  let pending = '';
  const decoder = new TextDecoder('utf-8');

  const scrubLine = async (line: string): Promise<string> => {
    if (tokenize === undefined) {
      const findings = detector.scan(line);
      return replaceSpans(line, findings, findings.map(maskFor));
    }
    return (await tokenizeText(line, tokenize, { detector })).text;
  };

  const drain = async (final: boolean, push: (s: string) => void): Promise<void> => {
    for (;;) {
      const nl = pending.indexOf('\n');
      if (nl === -1) break;
      const line = pending.slice(0, nl + 1);
      pending = pending.slice(nl + 1);
      push(await scrubLine(line));
    }
    while (pending.length > maxLine) {
      const piece = pending.slice(0, maxLine);
      pending = pending.slice(maxLine);
      push(await scrubLine(piece));
    }
    if (final && pending.length > 0) {
      const rest = pending;
      pending = '';
      push(await scrubLine(rest));
    }
  };

  return new Transform({
    transform(chunk: Buffer | string, _enc: BufferEncoding, callback: TransformCallback) {
      pending += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
      drain(false, (s) => this.push(s)).then(() => callback(), callback);
    },
    flush(callback: TransformCallback) {
      pending += decoder.decode();
      drain(true, (s) => this.push(s)).then(() => callback(), callback);
    },
  });
}
