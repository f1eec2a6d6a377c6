import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BUILTIN_RULES } from '../../src/detect/rules/index.js';
import { createRng } from '../../src/detect/synth.js';
import type { Rule, RuleFamily } from '../../src/detect/types.js';

/**
 * The labeled corpus (test/fixtures/detect/corpus.jsonl, written by generate-corpus.ts).
 * Positive records hold a realistic template and a seed; the secret is synthesised at run
 * time from the rule's own sample(), so no secret-shaped literal is committed.
 *
 * Template slots: ⟦key⟧ (field name), ⟦KEY⟧ (upper snake case), ⟦Key⟧ (HTTP header case),
 * ⟦value⟧ (the value as is), ⟦value:json⟧ (the value JSON-escaped, without quotes).
 */
export interface PositiveRecord {
  readonly kind: 'positive';
  readonly id: string;
  readonly rule: string;
  readonly context: string;
  readonly seed: number;
  readonly template: string;
}
export interface NegativeRecord {
  readonly kind: 'negative';
  readonly id: string;
  readonly context: string;
  /** Literal text (hard negatives) ... */
  readonly text?: string;
  /** ... or a reference to a rule's own negative example. */
  readonly rule?: string;
  readonly index?: number;
}
export interface KnownRecord {
  readonly kind: 'known';
  readonly id: string;
  readonly encoding: 'raw' | 'base64' | 'base64url' | 'url' | 'json';
  readonly seed: number;
  readonly template: string;
}
export type CorpusRecord = PositiveRecord | NegativeRecord | KnownRecord;

export interface Labeled {
  readonly id: string;
  readonly text: string;
  /** Expected secret span, absent for negatives. */
  readonly label?: {
    readonly family: RuleFamily;
    readonly rule: string;
    readonly start: number;
    readonly end: number;
  };
}

export const CORPUS_PATH = fileURLToPath(new URL('../fixtures/detect/corpus.jsonl', import.meta.url));

export function loadCorpus(path = CORPUS_PATH): CorpusRecord[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as CorpusRecord);
}

const RULES = new Map<string, Rule>(BUILTIN_RULES.map((r) => [r.id, r]));

export function headerCase(key: string): string {
  return key
    .split(/[_\-. ]+/)
    .filter((p) => p !== '')
    .map((p) => p[0]!.toUpperCase() + p.slice(1).toLowerCase())
    .join('-');
}

/** Expands a template; returns the text and where ⟦value⟧ landed (and in which escaping). */
function render(
  template: string,
  key: string,
  value: string,
): { text: string; valueAt: number; json: boolean } {
  let text = '';
  let valueAt = -1;
  let json = false;
  const re = /⟦(key|KEY|Key|value|value:json)⟧/g;
  let last = 0;
  for (let m = re.exec(template); m !== null; m = re.exec(template)) {
    text += template.slice(last, m.index);
    last = m.index + m[0].length;
    switch (m[1]) {
      case 'key':
        text += key;
        break;
      case 'KEY':
        text += key.toUpperCase().replace(/[.-]/g, '_');
        break;
      case 'Key':
        text += headerCase(key);
        break;
      case 'value':
        valueAt = text.length;
        text += value;
        break;
      case 'value:json':
        valueAt = text.length;
        json = true;
        text += JSON.stringify(value).slice(1, -1);
        break;
    }
  }
  return { text: text + template.slice(last), valueAt, json };
}

export function materialize(record: CorpusRecord): Labeled {
  if (record.kind === 'negative') {
    if (record.text !== undefined) return { id: record.id, text: record.text };
    const text = RULES.get(record.rule ?? '')?.examples.negatives[record.index ?? -1];
    if (text === undefined) throw new Error(`corpus record ${record.id} names a missing rule negative`);
    return { id: record.id, text };
  }
  if (record.kind === 'known') {
    throw new Error('known records are materialised by materializeKnown');
  }
  const rule = RULES.get(record.rule);
  if (rule === undefined) throw new Error(`corpus names unknown rule ${record.rule}`);
  const s = rule.sample(createRng(record.seed));
  const { text, valueAt, json } = render(record.template, s.key, s.value);
  const value = json ? JSON.stringify(s.value).slice(1, -1) : s.value;
  const secret = json ? JSON.stringify(s.secret).slice(1, -1) : s.secret;
  const start = valueAt + value.indexOf(secret);
  return {
    id: record.id,
    text,
    label: { family: rule.family, rule: rule.id, start, end: start + secret.length },
  };
}

/** A known-secret record: the secret to register and the text it is embedded in (encoded). */
export function materializeKnown(record: KnownRecord): Labeled & { readonly secret: string } {
  const rng = createRng(record.seed);
  const secret = `${rng.chars('abcdefghijkmnpqrstuvwxyz', 6)}-${rng.chars('ABCDEFGHJKLMNPQRSTUVWXYZ23456789', 10)}/${rng.chars('0123456789', 4)}`;
  let encoded: string;
  let prefix = '';
  switch (record.encoding) {
    case 'raw':
      encoded = secret;
      break;
    case 'url':
      encoded = encodeURIComponent(secret);
      break;
    case 'json':
      encoded = JSON.stringify(secret).slice(1, -1);
      break;
    case 'base64':
    case 'base64url': {
      // Embed after 0-2 bytes of context, as inside a larger encoded blob.
      prefix = 'xy'.slice(0, record.seed % 3);
      const whole = Buffer.from(`${prefix}${secret}!`).toString(record.encoding);
      encoded = whole;
      break;
    }
  }
  const at = record.template.indexOf('⟦value⟧');
  const text = record.template.replace('⟦value⟧', encoded);
  return {
    id: record.id,
    text,
    secret,
    label: { family: 'known-secret', rule: 'known-secret', start: at, end: at + encoded.length },
  };
}
