import { describe, expect, it } from 'vitest';
import { createDetector } from '../detector.js';
import { createRng } from '../synth.js';
import { RULE_FAMILIES } from '../types.js';
import { BUILTIN_RULES } from './index.js';

const detector = createDetector({ pii: true });

describe('built-in rules', () => {
  it('has at least 150 secret rules with unique kebab-case ids', () => {
    const secretRules = BUILTIN_RULES.filter((r) => r.family !== 'pii');
    expect(secretRules.length).toBeGreaterThanOrEqual(150);
    const ids = BUILTIN_RULES.map((r) => r.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const r of BUILTIN_RULES) {
      expect(r.id).toMatch(/^[a-z0-9]+(?:-[a-z0-9]+)*$/);
      expect(RULE_FAMILIES).toContain(r.family);
    }
  });

  it('keeps PII rules off by default', () => {
    const ids = new Set(createDetector().rules.map((r) => r.id));
    for (const r of BUILTIN_RULES) expect(ids.has(r.id)).toBe(r.family !== 'pii');
  });

  describe.each(BUILTIN_RULES.map((r) => [r.id, r] as const))('%s', (_id, rule) => {
    it('finds each of its positives, with the exact span', () => {
      expect(rule.examples.positives.length).toBeGreaterThanOrEqual(2);
      for (const p of rule.examples.positives) {
        const found = detector.scan(p.text).filter((f) => f.ruleId === rule.id);
        const spans = found.map((f) => p.text.slice(f.start, f.end));
        expect(spans, `positive: ${p.text.slice(0, 80)}`).toContain(p.secret);
      }
    });

    it('finds its synthetic sample in a key/value line', () => {
      const s = rule.sample(createRng(`t:${rule.id}`));
      const text = `${s.key}=${s.value}\n`;
      const found = detector.scan(text).filter((f) => f.ruleId === rule.id);
      expect(found.map((f) => text.slice(f.start, f.end))).toContain(s.secret);
    });

    it('reports none of its negatives', () => {
      expect(rule.examples.negatives.length).toBeGreaterThanOrEqual(1);
      for (const n of rule.examples.negatives) {
        const found = detector.scan(n).filter((f) => f.ruleId === rule.id);
        expect(found, `negative: ${n.slice(0, 80)}`).toEqual([]);
      }
    });
  });
});
