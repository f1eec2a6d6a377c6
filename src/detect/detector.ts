import { CoatcheckError } from '../core/errors.js';
import { isTicket } from '../core/ticket-format.js';
import { inEncodedBlobContext, isBinaryLike, isHashLike, isPlaceholder } from './false-positives.js';
import { createFingerprinter, valueHash } from './fingerprint.js';
import { createKeywordIndex, type KeywordHits, type KeywordIndex } from './keyword-index.js';
import type { KnownSecretMatcher } from './known-secrets.js';
import { assertRuleValid } from './rule-check.js';
import { BUILTIN_RULES } from './rules/index.js';
import type { Allowlist, Confidence, Finding, Rule, RuleFamily } from './types.js';
import { shannonEntropy } from './validators.js';

export interface DetectorOptions {
  /** The rule set (default: the built-in rules). */
  readonly rules?: readonly Rule[];
  /** Turn on the PII rules (email, card, IBAN, SSN, phone, IP). Default false. */
  readonly pii?: boolean;
  /** Rule ids to turn on in addition (e.g. one PII rule). */
  readonly enable?: readonly string[];
  /** Rule ids to turn off. */
  readonly disable?: readonly string[];
  readonly allowlist?: Allowlist;
  /** Vault values to find exactly (and encoded). Shared, so additions apply to later scans. */
  readonly knownSecrets?: KnownSecretMatcher;
  /** Key for fingerprints (HMAC-SHA-256 instead of SHA-256), so low-entropy values cannot be guessed from them. */
  readonly fingerprintKey?: string | Buffer;
  /** @internal bench/detect.ts: accumulates milliseconds spent per rule. */
  readonly profile?: Map<string, number>;
}

export interface Detector {
  /** The active rules. */
  readonly rules: readonly Rule[];
  /** Upper bound of a match's length in characters (the overlap a stream scanner keeps). */
  readonly maxMatchLength: number;
  /**
   * Findings, sorted by start, not overlapping. Offsets are UTF-16 code units for a string
   * and bytes for a Buffer (which is read as latin1, one character per byte).
   */
  scan(input: string | Buffer): Finding[];
}

/** Rule id used for matches of the known-secret matcher. */
export const KNOWN_SECRET_RULE_ID = 'known-secret';

const FAMILY_PRIORITY: Record<RuleFamily, number> = {
  'known-secret': 6,
  cloud: 5,
  'vcs-ci': 5,
  ai: 5,
  saas: 5,
  payments: 5,
  'private-key': 5,
  jwt: 4,
  'database-uri': 4,
  'http-auth': 3,
  generic: 2,
  pii: 1,
};
const CONFIDENCE_RANK: Record<Confidence, number> = { high: 3, medium: 2, low: 1 };

interface CompiledRule {
  readonly rule: Rule;
  readonly re: RegExp;
  readonly priority: number;
  /** Position in the rule list: of two equal findings, the earlier rule's is kept. */
  readonly order: number;
}

interface Candidate {
  readonly rule: CompiledRule | undefined;
  readonly start: number;
  readonly end: number;
  readonly secretId?: string;
  readonly encoding?: Finding['encoding'];
}

function compileAllowlist(allowlist: Allowlist | undefined, ids: ReadonlySet<string>) {
  const rules = new Set(allowlist?.rules ?? []);
  for (const id of rules) {
    if (!ids.has(id) && id !== KNOWN_SECRET_RULE_ID) {
      throw new CoatcheckError('CC_ERR_DETECT_UNKNOWN_RULE', `allowlist names unknown rule ${id}`, {
        details: { rule: id },
      });
    }
  }
  const hashes = new Set<string>();
  for (const h of allowlist?.valueHashes ?? []) {
    if (!/^[0-9a-f]{64}$/i.test(h)) {
      throw new CoatcheckError(
        'CC_ERR_DETECT_ALLOWLIST_INVALID',
        'allowlist value hash must be 64 hex digits (SHA-256)',
      );
    }
    hashes.add(h.toLowerCase());
  }
  const patterns = (allowlist?.patterns ?? []).map((p, i) => {
    if (p instanceof RegExp) return new RegExp(p.source, p.flags.replace(/[gy]/g, ''));
    try {
      return new RegExp(p);
    } catch (cause) {
      throw new CoatcheckError(
        'CC_ERR_DETECT_ALLOWLIST_INVALID',
        `allowlist pattern ${i} is not a valid regular expression`,
        {
          cause,
        },
      );
    }
  });
  return { rules, hashes, patterns };
}

function selectRules(options: DetectorOptions): Rule[] {
  const all = options.rules ?? BUILTIN_RULES;
  const ids = new Set(all.map((r) => r.id));
  for (const id of [...(options.enable ?? []), ...(options.disable ?? [])]) {
    if (!ids.has(id)) {
      throw new CoatcheckError('CC_ERR_DETECT_UNKNOWN_RULE', `unknown rule ${id}`, { details: { rule: id } });
    }
  }
  const enable = new Set(options.enable ?? []);
  const disable = new Set(options.disable ?? []);
  return all.filter((r) => {
    if (disable.has(r.id)) return false;
    if (enable.has(r.id)) return true;
    return r.defaultEnabled || (options.pii === true && r.family === 'pii');
  });
}

// A detector is made per vault change on some paths (the PostgreSQL output index): what
// depends only on the rules — their check, their compiled expressions, the keyword
// automaton — is made once per rule or keyword list. Sharing a global RegExp between
// detectors is safe because a scan is synchronous and resets lastIndex before each use.
const VALIDATED = new WeakSet<Rule>();
const PATTERNS = new WeakMap<Rule, Map<string, RegExp>>();
const KEYWORD_INDEXES = new Map<string, KeywordIndex>();
const MAX_KEYWORD_INDEXES = 16;

function compiledPattern(rule: Rule, flags: string): RegExp {
  let byFlags = PATTERNS.get(rule);
  if (byFlags === undefined) {
    byFlags = new Map();
    PATTERNS.set(rule, byFlags);
  }
  let re = byFlags.get(flags);
  if (re === undefined) {
    re = new RegExp(rule.pattern.source, flags);
    byFlags.set(flags, re);
  }
  return re;
}

export function keywordIndexFor(keywords: readonly string[]): KeywordIndex {
  const key = keywords.join('\0');
  let index = KEYWORD_INDEXES.get(key);
  if (index === undefined) {
    index = createKeywordIndex(keywords);
    if (KEYWORD_INDEXES.size >= MAX_KEYWORD_INDEXES)
      KEYWORD_INDEXES.delete(KEYWORD_INDEXES.keys().next().value!);
    KEYWORD_INDEXES.set(key, index);
  }
  return index;
}

/** Add the time since `since` to `name` in a bench profile; returns now. */
function phaseDone(profile: Map<string, number>, name: string, since: number): number {
  const now = performance.now();
  profile.set(name, (profile.get(name) ?? 0) + now - since);
  return now;
}

/** Lookbehind/lookahead context kept around each keyword window. */
const MARGIN = 16;
/** Context accept() reads before a value's start (inEncodedBlobContext) and after its end. */
const CONTEXT_BEFORE = 96;
const CONTEXT_AFTER = 2;

/** The text a scan reads, as latin1/UTF-16 strings: whole, or decoded around keyword hits only. */
interface Text {
  readonly length: number;
  /** Start (in input units) of the string the last around() returned. */
  readonly segmentStart: number;
  /** A string holding [from - CONTEXT_BEFORE, to + CONTEXT_AFTER) (clipped to the input), starting at segmentStart. */
  around(from: number, to: number): string;
  /** The whole input as a string. */
  whole(): string;
  /** Drop references to the input. */
  release(): void;
}

class WholeText implements Text {
  length = 0;
  readonly segmentStart = 0;
  private input: string | Buffer = '';
  private text: string | undefined;
  reset(input: string | Buffer): this {
    this.input = input;
    this.length = input.length;
    this.text = typeof input === 'string' ? input : undefined;
    return this;
  }
  around(): string {
    return this.whole();
  }
  whole(): string {
    if (this.text === undefined) this.text = (this.input as Buffer).toString('latin1');
    return this.text;
  }
  release(): void {
    this.input = '';
    this.text = undefined;
  }
}

/**
 * A Buffer decoded only where some rule's window (plus its context) can reach from a
 * keyword hit: decoding the whole input to latin1 cost more than the keyword pass. The
 * reachable ranges are marked in blocks; each run of marked blocks is decoded once.
 */
const BLOCK_BITS = 8;
const EMPTY = Buffer.alloc(0);
class WindowText implements Text {
  length = 0;
  segmentStart = 0;
  private input: Buffer = EMPTY;
  private full: string | undefined;
  /** Per block: the index of the segment it belongs to, or -1. */
  private blockSeg = new Int32Array(64);
  private segStart: number[] = [];
  private segEnd: number[] = [];
  private segText: (string | undefined)[] = [];
  constructor(
    private readonly reachBefore: Int32Array,
    private readonly reachAfter: Int32Array,
    private readonly keywordLength: Int32Array,
  ) {}

  reset(input: Buffer, hits: KeywordHits): this {
    this.input = input;
    this.length = input.length;
    this.full = undefined;
    this.segStart.length = 0;
    this.segEnd.length = 0;
    this.segText.length = 0;
    if (hits.count === 0) return this;
    const blocks = (input.length >> BLOCK_BITS) + 1;
    if (this.blockSeg.length < blocks)
      this.blockSeg = new Int32Array(Math.max(blocks, this.blockSeg.length * 2));
    const mark = this.blockSeg;
    mark.fill(0, 0, blocks);
    let marked = 0;
    for (let i = 0; i < hits.count; i++) {
      const k = hits.keyword[i]!;
      const end = hits.end[i]!;
      const lo = Math.max(0, end - this.keywordLength[k]! - this.reachBefore[k]! - MARGIN - CONTEXT_BEFORE);
      const hi = Math.min(input.length, end + this.reachAfter[k]! + MARGIN + CONTEXT_AFTER);
      for (let b = lo >> BLOCK_BITS; b <= hi >> BLOCK_BITS; b++) {
        if (mark[b] === 0) {
          mark[b] = 1;
          marked++;
        }
      }
    }
    if (marked * 2 > blocks) {
      // Mostly covered: one decode of the whole input.
      this.full = input.toString('latin1');
      return this;
    }
    // Runs of marked blocks become segments (decoded on first use).
    for (let b = 0; b < blocks; b++) {
      if (mark[b] === 0) {
        mark[b] = -1;
        continue;
      }
      const s = this.segStart.length;
      this.segStart.push(b << BLOCK_BITS);
      for (; b < blocks && mark[b] === 1; b++) mark[b] = s;
      this.segEnd.push(Math.min(input.length, b << BLOCK_BITS));
      this.segText.push(undefined);
      b--;
    }
    return this;
  }

  around(from: number, to: number): string {
    if (this.full !== undefined) {
      this.segmentStart = 0;
      return this.full;
    }
    const s = this.blockSeg[from >> BLOCK_BITS]!;
    const start = this.segStart[s];
    // Every window lies in one segment (its hits marked it); anything else is a bug, not a reason to scan less.
    if (
      s < 0 ||
      start === undefined ||
      start > Math.max(0, from - CONTEXT_BEFORE) ||
      this.segEnd[s]! < Math.min(this.length, to + CONTEXT_AFTER)
    ) {
      this.segmentStart = 0;
      return this.whole();
    }
    let t = this.segText[s];
    if (t === undefined) {
      t = this.input.toString('latin1', start, this.segEnd[s]!);
      this.segText[s] = t;
    }
    this.segmentStart = start;
    return t;
  }

  whole(): string {
    if (this.full === undefined) this.full = this.input.toString('latin1');
    return this.full;
  }

  release(): void {
    this.input = EMPTY;
    this.full = undefined;
    this.segText.length = 0;
  }
}

export function createDetector(options: DetectorOptions = {}): Detector {
  const rules = selectRules(options);
  for (const r of rules) {
    if (VALIDATED.has(r)) continue;
    assertRuleValid(r);
    VALIDATED.add(r);
  }
  const allow = compileAllowlist(
    options.allowlist,
    new Set((options.rules ?? BUILTIN_RULES).map((r) => r.id)),
  );
  const fingerprint = createFingerprinter(options.fingerprintKey);
  const known = options.knownSecrets;

  const compiled: CompiledRule[] = rules
    .filter((r) => !allow.rules.has(r.id))
    .map((rule, order) => {
      const flags = new Set(`${rule.pattern.flags}gd`);
      return {
        rule,
        order,
        re: compiledPattern(rule, [...flags].join('')),
        priority: FAMILY_PRIORITY[rule.family],
      };
    });

  // Keyword -> rules.
  const keywordList: string[] = [];
  const keywordSlot = new Map<string, number>();
  const rulesOfKeyword: number[][] = [];
  const fullText: number[] = [];
  compiled.forEach((c, ri) => {
    if (c.rule.keywords.length === 0) {
      fullText.push(ri);
      return;
    }
    for (const kw of c.rule.keywords) {
      let k = keywordSlot.get(kw);
      if (k === undefined) {
        k = keywordList.length;
        keywordSlot.set(kw, k);
        keywordList.push(kw);
        rulesOfKeyword.push([]);
      }
      if (!rulesOfKeyword[k]!.includes(ri)) rulesOfKeyword[k]!.push(ri);
    }
  });
  const keywordLength = Int32Array.from(keywordList.map((k) => k.length));
  const index = keywordIndexFor(keywordList);
  const maxMatchLength = compiled.reduce((m, c) => Math.max(m, c.rule.maxLength), 0);
  const knownSkipped = allow.rules.has(KNOWN_SECRET_RULE_ID);

  /** Whether the scan running now reads a Buffer (accept() then also checks UTF-8). */
  let scanningBytes = false;

  /** `start` is an offset in `text`, which holds at least 96 characters before it (or the input's start) and 2 after the value (or the input's end). */
  function accept(c: CompiledRule, value: string, text: string, start: number): boolean {
    const rule = c.rule;
    if (value.length === 0) return false;
    if (isTicket(value)) return false;
    if (isBinaryLike(value, scanningBytes)) return false;
    if (rule.validate !== undefined && !rule.validate(value)) return false;
    if (rule.minEntropy !== undefined && shannonEntropy(value) < rule.minEntropy) return false;
    if (rule.allowPlaceholders !== true && isPlaceholder(value)) return false;
    if (rule.rejectHashLike === true && isHashLike(value)) return false;
    if (rule.family !== 'private-key' && inEncodedBlobContext(text, start)) return false;
    // A value running into a template (`pypi-<YOUR_TOKEN>`, `sk_${KEY}`) is a placeholder.
    const next = text.charCodeAt(start + value.length);
    if (
      next === 60 /* < */ ||
      ((next === 36 /* $ */ || next === 123) /* { */ && text.charCodeAt(start + value.length + 1) === 123)
    ) {
      return rule.allowPlaceholders === true;
    }
    return true;
  }

  function runWindow(
    c: CompiledRule,
    text: Text,
    from: number,
    to: number,
    hitStart: number[],
    hitEnd: number[],
    out: Candidate[],
  ): void {
    const base = Math.max(0, from - MARGIN);
    const limit = Math.min(text.length, to + MARGIN);
    // The window's text with the context accept() reads around a value (CONTEXT_BEFORE
    // before, CONTEXT_AFTER after): for a Buffer, only the decoded segment that holds it.
    const ctx = text.around(base, limit);
    const ctxBase = text.segmentStart;
    const subject = ctx.slice(base - ctxBase, limit - ctxBase);
    const re = c.re;
    re.lastIndex = 0;
    let h = 0;
    for (let m = re.exec(subject); m !== null; m = re.exec(subject)) {
      const ms = base + m.index;
      const me = ms + m[0].length;
      if (m[0].length === 0) re.lastIndex++;
      // The match must contain a keyword occurrence (or, for context rules, follow one).
      while (h < hitStart.length && hitStart[h]! < ms) h++;
      let contains = c.rule.keywordInMatch === false && h > 0;
      for (let j = h; j < hitStart.length && hitStart[j]! < me; j++) {
        if (hitEnd[j]! <= me) {
          contains = true;
          break;
        }
      }
      if (!contains) continue;
      const span = m.indices?.[1];
      const value = m[1];
      if (span === undefined || value === undefined) continue;
      const start = base + span[0];
      if (!accept(c, value, ctx, start - ctxBase)) continue;
      out.push({ rule: c, start, end: base + span[1] });
    }
  }

  function runFullText(c: CompiledRule, text: string, out: Candidate[]): void {
    const re = c.re;
    re.lastIndex = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      if (m[0].length === 0) re.lastIndex++;
      const span = m.indices?.[1];
      const value = m[1];
      if (span === undefined || value === undefined) continue;
      if (!accept(c, value, text, span[0])) continue;
      out.push({ rule: c, start: span[0], end: span[1] });
    }
  }

  /**
   * Overlapping candidates: among rule findings the highest-ranked wins (as before), but
   * a run of overlapping candidates that involves a known vault secret becomes one finding
   * spanning the whole run, reported as its highest-ranked candidate (a known secret).
   * Keeping one known secret and dropping an overlapping one would leave the dropped
   * one's bytes outside the replaced span: an agent that makes the vault learn a value
   * ending where a target secret begins would read the target back minus its first byte.
   */
  function resolve(cands: Candidate[]): Candidate[] {
    if (!cands.some((c) => c.rule === undefined)) return byPriority(cands);
    const byStart = cands.slice().sort((a, b) => a.start - b.start || b.end - a.end);
    const out: Candidate[] = [];
    let run: Candidate[] = [];
    let end = -1;
    const close = () => {
      if (run.length === 0) return;
      const known = run.filter((c) => c.rule === undefined);
      if (known.length === 0 || run.length === 1) {
        out.push(...byPriority(run));
        return;
      }
      const start = run[0]!.start;
      const best = known.slice().sort((a, b) => b.end - b.start - (a.end - a.start) || a.start - b.start)[0]!;
      out.push({ ...best, start, end });
    };
    for (const c of byStart) {
      if (c.start >= end) {
        close();
        run = [];
      }
      run.push(c);
      end = Math.max(end, c.end);
    }
    close();
    return out;
  }

  function byPriority(cands: Candidate[]): Candidate[] {
    const rank = (x: Candidate): number =>
      x.rule === undefined ? 1_000 : x.rule.priority * 10 + CONFIDENCE_RANK[x.rule.rule.confidence];
    const sorted = cands
      .slice()
      .sort(
        (a, b) =>
          rank(b) - rank(a) ||
          b.end - b.start - (a.end - a.start) ||
          a.start - b.start ||
          (a.rule?.order ?? -1) - (b.rule?.order ?? -1),
      );
    // `kept` stays sorted by start and free of overlaps, so one binary search per candidate.
    const kept: Candidate[] = [];
    for (const c of sorted) {
      let lo = 0;
      let hi = kept.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (kept[mid]!.end <= c.start) lo = mid + 1;
        else hi = mid;
      }
      if (lo < kept.length && kept[lo]!.start < c.end) continue;
      kept.splice(lo, 0, c);
    }
    return kept;
  }

  // How far any rule's window reaches before a keyword's start and after its end.
  const reachBefore = new Int32Array(keywordList.length);
  const reachAfter = new Int32Array(keywordList.length);
  rulesOfKeyword.forEach((ris, k) => {
    for (const ri of ris) {
      const rule = compiled[ri]!.rule;
      reachBefore[k] = Math.max(reachBefore[k]!, rule.maxKeywordOffset ?? rule.maxLength);
      reachAfter[k] = Math.max(reachAfter[k]!, rule.maxLength);
    }
  });
  const wholeText = new WholeText();
  const windowText = new WindowText(reachBefore, reachAfter, keywordLength);

  const winFrom = new Int32Array(compiled.length).fill(-1);
  const winTo = new Int32Array(compiled.length);
  const winHitStart: number[][] = compiled.map(() => []);
  const winHitEnd: number[][] = compiled.map(() => []);
  const touched = new Int32Array(compiled.length);
  const touchedMark = new Uint8Array(compiled.length);

  /** Run rule `ri` over its current window and clear the window. */
  function flush(ri: number, text: Text, cands: Candidate[]): void {
    const c = compiled[ri]!;
    const profile = options.profile;
    const t0 = profile === undefined ? 0 : performance.now();
    runWindow(c, text, winFrom[ri]!, winTo[ri]!, winHitStart[ri]!, winHitEnd[ri]!, cands);
    if (profile !== undefined) profile.set(c.rule.id, (profile.get(c.rule.id) ?? 0) + performance.now() - t0);
    winHitStart[ri]!.length = 0;
    winHitEnd[ri]!.length = 0;
    winFrom[ri] = -1;
  }

  function scan(input: string | Buffer): Finding[] {
    const bytes = typeof input !== 'string';
    scanningBytes = bytes;
    const cands: Candidate[] = [];

    // Phase timings only for bench/detect (no closure per call otherwise).
    const profile = options.profile;
    let tp = profile === undefined ? 0 : performance.now();
    const hits = index.find(input);
    if (profile !== undefined) tp = phaseDone(profile, '#keywords', tp);
    // A Buffer is decoded (latin1) only around the keyword hits, unless the full text is needed anyway.
    const needFull = fullText.length > 0 || (known !== undefined && !knownSkipped && known.size > 0);
    const text: Text = bytes && !needFull ? windowText.reset(input, hits) : wholeText.reset(input);
    let touchedCount = 0;
    try {
      for (let i = 0; i < hits.count; i++) {
        const k = hits.keyword[i]!;
        const end = hits.end[i]!;
        const start = end - keywordLength[k]!;
        for (const ri of rulesOfKeyword[k]!) {
          const rule = compiled[ri]!.rule;
          const from = Math.max(0, start - (rule.maxKeywordOffset ?? rule.maxLength));
          const to = end + rule.maxLength;
          if (winFrom[ri] !== -1 && from > winTo[ri]!) flush(ri, text, cands);
          if (winFrom[ri] === -1) {
            winFrom[ri] = from;
            winTo[ri] = to;
            if (touchedMark[ri] === 0) {
              touchedMark[ri] = 1;
              touched[touchedCount++] = ri;
            }
          } else if (to > winTo[ri]!) {
            winTo[ri] = to;
          }
          winHitStart[ri]!.push(start);
          winHitEnd[ri]!.push(end);
        }
      }
      // Rules in order, as before: a candidate's position in the list decides nothing, but keep it stable.
      // (Insertion sort in place: a subarray view would be a typed-array allocation per call.)
      for (let a = 1; a < touchedCount; a++) {
        const v = touched[a]!;
        let b = a - 1;
        for (; b >= 0 && touched[b]! > v; b--) touched[b + 1] = touched[b]!;
        touched[b + 1] = v;
      }
      for (let t = 0; t < touchedCount; t++) {
        const ri = touched[t]!;
        if (winFrom[ri] !== -1) flush(ri, text, cands);
      }
    } finally {
      // Leave the shared state clean even when a rule throws.
      for (let t = 0; t < touchedCount; t++) {
        const ri = touched[t]!;
        touchedMark[ri] = 0;
        winFrom[ri] = -1;
        winHitStart[ri]!.length = 0;
        winHitEnd[ri]!.length = 0;
      }
    }
    if (profile !== undefined) tp = phaseDone(profile, '#windows', tp);
    for (const ri of fullText) runFullText(compiled[ri]!, text.whole(), cands);
    if (profile !== undefined) tp = phaseDone(profile, '#full-text', tp);

    if (known !== undefined && !knownSkipped && known.size > 0) {
      for (const m of known.find(text.whole(), bytes ? 'bytes' : 'text', bytes ? input : undefined)) {
        cands.push({
          rule: undefined,
          start: m.start,
          end: m.end,
          secretId: m.secretId,
          encoding: m.encoding,
        });
      }
    }
    if (profile !== undefined) tp = phaseDone(profile, '#known', tp);
    if (cands.length === 0) {
      text.release();
      return [];
    }

    const findings: Finding[] = [];
    for (const c of resolve(cands)) {
      const raw = bytes
        ? Buffer.from(input.subarray(c.start, c.end))
        : Buffer.from(input.slice(c.start, c.end), 'utf8');
      if (allow.hashes.size > 0 && allow.hashes.has(valueHash(raw))) continue;
      if (allow.patterns.length > 0) {
        const v = bytes ? input.toString('latin1', c.start, c.end) : input.slice(c.start, c.end);
        if (allow.patterns.some((p) => p.test(v))) continue;
      }
      if (c.rule === undefined) {
        findings.push({
          ruleId: KNOWN_SECRET_RULE_ID,
          family: 'known-secret',
          start: c.start,
          end: c.end,
          fingerprint: fingerprint(raw),
          confidence: 'high',
          secretId: c.secretId!,
          encoding: c.encoding!,
        });
      } else {
        findings.push({
          ruleId: c.rule.rule.id,
          family: c.rule.rule.family,
          start: c.start,
          end: c.end,
          fingerprint: fingerprint(raw),
          confidence: c.rule.rule.confidence,
        });
      }
    }
    text.release();
    return findings;
  }

  return { rules: compiled.map((c) => c.rule), maxMatchLength: Math.max(maxMatchLength, 64), scan };
}
