import { ALNUM, createRng } from '../synth.js';
import type { Confidence, Rng, Rule, RuleFamily, RuleSample } from '../types.js';

/** Escapes a literal for use inside a RegExp. */
export function escapeRegExp(literal: string): string {
  return literal.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
}

type Length = number | readonly [number, number];

function quantifier(length: Length): string {
  return typeof length === 'number' ? `{${length}}` : `{${length[0]},${length[1]}}`;
}

function minOf(length: Length): number {
  return typeof length === 'number' ? length : length[0];
}

function maxOf(length: Length): number {
  return typeof length === 'number' ? length : length[1];
}

/** Characters that continue a token: letters, digits and the specials of the body class. */
function boundaryClass(bodyClass: string): string {
  let out = 'A-Za-z0-9';
  if (bodyClass.includes('_')) out += '_';
  if (bodyClass.includes('\\-')) out += '\\-';
  if (bodyClass.includes('+')) out += '+';
  if (bodyClass.includes('/')) out += '/';
  if (bodyClass.includes('=')) out += '=';
  if (bodyClass.includes('.')) out += '.';
  return out;
}

interface Common {
  readonly id: string;
  readonly family: RuleFamily;
  readonly title: string;
  readonly confidence?: Confidence;
  readonly minEntropy?: number;
  readonly validate?: (secret: string) => boolean;
  readonly reference?: string;
  readonly negatives?: readonly string[];
  readonly positives?: readonly { text: string; secret: string }[];
  readonly allowPlaceholders?: boolean;
}

export interface PrefixedSpec extends Common {
  /** Literal prefix (part of the secret), e.g. `ghp_`. */
  readonly prefix: string;
  /** RegExp character-class body of the random part, e.g. `A-Za-z0-9_\\-`. */
  readonly body: string;
  readonly length: Length;
  /** Alphabet the synthetic random part is drawn from. */
  readonly alphabet?: string;
  /** Literal suffix (part of the secret). */
  readonly suffix?: string;
  /** Overrides the synthetic value. */
  readonly make?: (rng: Rng) => string;
  readonly keywords?: readonly string[];
  /** Field name used in keyed examples. */
  readonly key?: string;
  /** Left boundary override (a RegExp fragment). */
  readonly leftBoundary?: string;
  readonly caseInsensitive?: boolean;
}

/** A token with a distinctive literal prefix: recognisable on its own. */
export function prefixed(spec: PrefixedSpec): Rule {
  const boundary = boundaryClass(spec.body);
  const leftClass = `A-Za-z0-9${spec.body.includes('_') ? '_' : ''}${spec.body.includes('\\-') ? '\\-' : ''}`;
  const suffix = spec.suffix === undefined ? '' : escapeRegExp(spec.suffix);
  const left = spec.leftBoundary ?? `(?<![${leftClass}])`;
  const source = `${left}(${escapeRegExp(spec.prefix)}[${spec.body}]${quantifier(spec.length)}${suffix})(?![${boundary}])`;
  const alphabet = spec.alphabet ?? ALNUM;
  const make =
    spec.make ?? ((rng: Rng) => spec.prefix + rng.chars(alphabet, maxOf(spec.length)) + (spec.suffix ?? ''));
  const key = spec.key ?? 'token';
  const sample = (rng: Rng): RuleSample => {
    const value = make(rng);
    return { key, value, secret: value, standalone: true };
  };
  const rng = exampleRng(spec.id);
  const a = sample(rng).value;
  const b = sample(rng).value;
  const shortBody = a.slice(0, spec.prefix.length + minOf(spec.length) - 3);
  return {
    id: spec.id,
    family: spec.family,
    title: spec.title,
    pattern: new RegExp(source, spec.caseInsensitive ? 'i' : ''),
    keywords: spec.keywords ?? [spec.prefix.toLowerCase()],
    ...(spec.keywords === undefined && spec.prefix !== '' ? { maxKeywordOffset: 0 } : {}),
    maxLength: spec.prefix.length + maxOf(spec.length) + (spec.suffix?.length ?? 0) + 2,
    confidence: spec.confidence ?? 'high',
    defaultEnabled: true,
    sample,
    ...(spec.minEntropy === undefined ? {} : { minEntropy: spec.minEntropy }),
    ...(spec.validate === undefined ? {} : { validate: spec.validate }),
    ...(spec.reference === undefined ? {} : { reference: spec.reference }),
    ...(spec.allowPlaceholders === undefined ? {} : { allowPlaceholders: spec.allowPlaceholders }),
    examples: {
      positives: [
        { text: a, secret: a },
        { text: `${key}: "${b}"`, secret: b },
        { text: `curl -H 'Authorization: Bearer ${a}' https://api.example.net/v1`, secret: a },
        ...(spec.positives ?? []),
      ],
      negatives: [
        shortBody,
        `${spec.prefix}${'x'.repeat(maxOf(spec.length))}${spec.suffix ?? ''}`,
        `${key}: "${spec.prefix}<YOUR_KEY>"`,
        ...(spec.negatives ?? []),
      ],
    },
  };
}

export interface KeyedSpec extends Common {
  /** RegExp alternatives for the field name; `_` stands for an optional `_`, `-` or `.`. */
  readonly keys: readonly string[];
  /**
   * Lower-case literals, each contained in some key. Omit to derive them from plain keys
   * (`api_key` gives api_key, api-key, api.key, apikey): precise keywords keep windows few.
   */
  readonly keywords?: readonly string[];
  /** RegExp of the value (without a capture group). */
  readonly value: string;
  /** Characters that continue a value (right boundary). */
  readonly valueBoundary?: string;
  readonly make: (rng: Rng) => string;
  /** Field name used in examples and the corpus. */
  readonly key: string;
  readonly maxValueLength: number;
  readonly rejectHashLike?: boolean;
}

/** Spellings of plain keys: each `_` as `_`, `-`, `.` or nothing (lower-case). */
export function keyVariants(keys: readonly string[]): string[] {
  const out = new Set<string>();
  for (const key of keys) {
    if (!/^[a-z0-9_]+$/i.test(key)) throw new Error(`cannot derive keywords from key ${key}`);
    let forms = [''];
    for (const part of key.toLowerCase().split(/(_)/)) {
      const options = part === '_' ? ['_', '-', '.', ''] : [part];
      forms = forms.flatMap((f) => options.map((o) => f + o));
    }
    for (const f of forms) out.add(f);
  }
  return [...out];
}

const SEPARATOR = `[\\s'"\`]{0,3}(?:=>|:=|=|:|\\|)[\\s'"\`]{0,5}`;

/** A value recognisable only by the field it is assigned to (`aws_secret_access_key=`). */
export function keyed(spec: KeyedSpec): Rule {
  const keys = spec.keys.map((k) => k.replace(/_/g, '[_.\\-]?')).join('|');
  const boundary = spec.valueBoundary ?? 'A-Za-z0-9';
  const source = `(?:${keys})[\\w.\\-]{0,24}?${SEPARATOR}(${spec.value})(?![${boundary}])`;
  const sample = (rng: Rng): RuleSample => {
    const value = spec.make(rng);
    return { key: spec.key, value, secret: value, standalone: false };
  };
  const rng = exampleRng(spec.id);
  const a = sample(rng).value;
  const b = sample(rng).value;
  const c = sample(rng).value;
  return {
    id: spec.id,
    family: spec.family,
    title: spec.title,
    pattern: new RegExp(source, 'i'),
    keywords: spec.keywords ?? keyVariants(spec.keys),
    maxLength: 64 + spec.maxValueLength,
    // The keyword sits inside the field name at the start of the match; a derived keyword is
    // a spelling of the whole key, so some keyword occurrence starts exactly there.
    maxKeywordOffset: spec.keywords === undefined ? 0 : 64,
    confidence: spec.confidence ?? 'medium',
    defaultEnabled: true,
    sample,
    ...(spec.minEntropy === undefined ? {} : { minEntropy: spec.minEntropy }),
    ...(spec.validate === undefined ? {} : { validate: spec.validate }),
    ...(spec.reference === undefined ? {} : { reference: spec.reference }),
    ...(spec.rejectHashLike === undefined ? {} : { rejectHashLike: spec.rejectHashLike }),
    ...(spec.allowPlaceholders === undefined ? {} : { allowPlaceholders: spec.allowPlaceholders }),
    examples: {
      positives: [
        { text: `${spec.key}=${a}`, secret: a },
        { text: `{"${spec.key}": "${b}"}`, secret: b },
        { text: `  ${spec.key}: '${c}'`, secret: c },
        ...(spec.positives ?? []),
      ],
      negatives: [
        `${spec.key}=your-api-key-here`,
        `${spec.key}: "\${${spec.key.toUpperCase()}}"`,
        `${spec.key} = "{{ ${spec.key} }}"`,
        `${spec.key}=<YOUR_KEY>`,
        `${spec.key}: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`,
        ...(spec.negatives ?? []),
      ],
    },
  };
}

export interface CustomSpec extends Common {
  readonly pattern: RegExp;
  readonly keywords: readonly string[];
  readonly maxLength: number;
  readonly maxKeywordOffset?: number;
  readonly keywordInMatch?: boolean;
  readonly sample: (rng: Rng) => RuleSample;
  readonly rejectHashLike?: boolean;
  readonly defaultEnabled?: boolean;
  readonly positives: readonly { text: string; secret: string }[];
  readonly negatives: readonly string[];
}

/** Anything else: the caller writes the pattern and the examples. */
export function custom(spec: CustomSpec): Rule {
  return {
    id: spec.id,
    family: spec.family,
    title: spec.title,
    pattern: spec.pattern,
    keywords: spec.keywords,
    maxLength: spec.maxLength,
    ...(spec.maxKeywordOffset === undefined ? {} : { maxKeywordOffset: spec.maxKeywordOffset }),
    ...(spec.keywordInMatch === undefined ? {} : { keywordInMatch: spec.keywordInMatch }),
    confidence: spec.confidence ?? 'high',
    defaultEnabled: spec.defaultEnabled ?? true,
    sample: spec.sample,
    ...(spec.minEntropy === undefined ? {} : { minEntropy: spec.minEntropy }),
    ...(spec.validate === undefined ? {} : { validate: spec.validate }),
    ...(spec.reference === undefined ? {} : { reference: spec.reference }),
    ...(spec.rejectHashLike === undefined ? {} : { rejectHashLike: spec.rejectHashLike }),
    ...(spec.allowPlaceholders === undefined ? {} : { allowPlaceholders: spec.allowPlaceholders }),
    examples: { positives: spec.positives, negatives: spec.negatives },
  };
}

/** Synthetic positives for a custom rule, drawn from its own sample(). */
export function samplePositives(
  id: string,
  sample: (rng: Rng) => RuleSample,
  wrap: (value: string, key: string) => string = (v) => v,
  count = 2,
): { text: string; secret: string }[] {
  const rng = exampleRng(id);
  const out: { text: string; secret: string }[] = [];
  for (let i = 0; i < count; i++) {
    const s = sample(rng);
    out.push({ text: wrap(s.value, s.key), secret: s.secret });
  }
  return out;
}

export function exampleRng(id: string): Rng {
  return createRng(`example:${id}`);
}
