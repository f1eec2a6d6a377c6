import { describe, expect, it } from 'vitest';
import { createDetector } from '../../src/detect/detector.js';
import { createKnownSecretMatcher } from '../../src/detect/known-secrets.js';
import { BUILTIN_RULES } from '../../src/detect/rules/index.js';
import { PII_RULES } from '../../src/detect/rules/pii.js';
import type { Finding, RuleFamily } from '../../src/detect/types.js';
import { type KnownRecord, type Labeled, loadCorpus, materialize, materializeKnown } from './corpus.js';

interface Tally {
  labels: number;
  found: number;
  findings: number;
  truePositives: number;
}

const THRESHOLD = 0.95;
const records = loadCorpus();

function tallyInto(
  tallies: Map<RuleFamily, Tally>,
  doc: Labeled,
  findings: readonly Finding[],
  families: ReadonlySet<RuleFamily>,
): void {
  const get = (f: RuleFamily): Tally => {
    let t = tallies.get(f);
    if (t === undefined) {
      t = { labels: 0, found: 0, findings: 0, truePositives: 0 };
      tallies.set(f, t);
    }
    return t;
  };
  const label = doc.label;
  const overlaps = (f: Finding): boolean => label !== undefined && f.start < label.end && f.end > label.start;
  if (label !== undefined && families.has(label.family)) {
    const t = get(label.family);
    t.labels++;
    // Recall: the secret was found (by its own rule family or a more general one, e.g. an
    // `Api-Key:` header found by the HTTP rules). Precision below is per reporting family.
    if (findings.some(overlaps)) t.found++;
  }
  for (const f of findings) {
    if (!families.has(f.family)) continue;
    const t = get(f.family);
    t.findings++;
    if (overlaps(f)) t.truePositives++;
  }
}

function report(tallies: Map<RuleFamily, Tally>): Record<string, { recall: number; precision: number }> {
  const out: Record<string, { recall: number; precision: number }> = {};
  for (const [family, t] of [...tallies].sort()) {
    out[family] = {
      recall: t.labels === 0 ? 1 : t.found / t.labels,
      precision: t.findings === 0 ? 1 : t.truePositives / t.findings,
    };
  }
  return out;
}

describe('labeled corpus', () => {
  it('covers every rule with positives in at least 5 contexts, and has hard negatives', () => {
    const perRule = new Map<string, Set<string>>();
    for (const r of records) {
      if (r.kind !== 'positive') continue;
      const s = perRule.get(r.rule) ?? new Set<string>();
      s.add(r.context);
      perRule.set(r.rule, s);
    }
    for (const rule of BUILTIN_RULES)
      expect(perRule.get(rule.id)?.size ?? 0, rule.id).toBeGreaterThanOrEqual(5);
    expect(records.filter((r) => r.kind === 'negative').length).toBeGreaterThanOrEqual(300);
    expect(records.filter((r) => r.kind === 'known').length).toBeGreaterThanOrEqual(50);
  });

  it('has recall and precision >= 0.95 for every secret rule family', () => {
    const detector = createDetector();
    const families = new Set<RuleFamily>(
      BUILTIN_RULES.filter((r) => r.family !== 'pii').map((r) => r.family),
    );
    const tallies = new Map<RuleFamily, Tally>();
    const misses: string[] = [];
    for (const r of records) {
      if (r.kind === 'known') continue;
      const doc = materialize(r);
      const findings = detector.scan(doc.text);
      tallyInto(tallies, doc, findings, families);
      const label = doc.label;
      if (label !== undefined && families.has(label.family)) {
        if (!findings.some((f) => f.start < label.end && f.end > label.start)) {
          misses.push(`miss ${doc.id} ${label.rule} (${r.kind === 'positive' ? r.context : ''})`);
        }
      }
      for (const f of findings) {
        if (label === undefined || f.start >= label.end || f.end <= label.start) {
          misses.push(`false ${doc.id} ${f.ruleId}`);
        }
      }
    }
    const result = report(tallies);
    console.info('secret rules per family:', JSON.stringify(result, null, 1));
    if (misses.length > 0) console.info(misses.slice(0, 60).join('\n'));
    expect([...families].sort()).toEqual([...tallies.keys()].sort());
    for (const [family, m] of Object.entries(result)) {
      expect(m.recall, `${family} recall`).toBeGreaterThanOrEqual(THRESHOLD);
      expect(m.precision, `${family} precision`).toBeGreaterThanOrEqual(THRESHOLD);
    }
  });

  it('has recall and precision >= 0.95 for PII rules', () => {
    const detector = createDetector({ rules: PII_RULES, pii: true });
    const tallies = new Map<RuleFamily, Tally>();
    const piiIds = new Set(PII_RULES.map((r) => r.id));
    for (const r of records) {
      if (r.kind === 'known') continue;
      if (r.kind === 'positive' && !piiIds.has(r.rule)) continue;
      if (
        r.kind === 'negative' &&
        r.context.startsWith('rule-negative:') &&
        !/^rule-negative:(?:email|payment|iban|us-ssn|phone|ipv)/.test(r.context)
      ) {
        continue;
      }
      const doc = materialize(r);
      tallyInto(tallies, doc, detector.scan(doc.text), new Set<RuleFamily>(['pii']));
    }
    const result = report(tallies);
    console.info('pii:', JSON.stringify(result));
    expect(result['pii']!.recall).toBeGreaterThanOrEqual(THRESHOLD);
    expect(result['pii']!.precision).toBeGreaterThanOrEqual(THRESHOLD);
  });

  it('finds known secrets in raw, base64, url-safe base64, URL-encoded and JSON-escaped forms', () => {
    const known = createKnownSecretMatcher();
    const detector = createDetector({ knownSecrets: known });
    const docs = records.filter((r): r is KnownRecord => r.kind === 'known').map(materializeKnown);
    docs.forEach((d, i) => {
      known.add(`secret-${i}`, d.secret);
    });
    const tallies = new Map<RuleFamily, Tally>();
    for (const d of docs) tallyInto(tallies, d, detector.scan(d.text), new Set<RuleFamily>(['known-secret']));
    const result = report(tallies);
    expect(result['known-secret']).toEqual({ recall: 1, precision: 1 });
  });
});
