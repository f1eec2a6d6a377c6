import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DOC_PATH, RULES_END, RULES_START, renderDoc, renderRuleList } from './generate-docs.js';
import { BUILTIN_RULES } from './rules/index.js';

describe('docs/detect.md', () => {
  const doc = readFileSync(DOC_PATH, 'utf8');

  it('has a rule list equal to the generated one (run src/detect/generate-docs.ts)', () => {
    expect(doc).toBe(renderDoc(doc));
  });

  it('names every rule id', () => {
    const list = doc.slice(doc.indexOf(RULES_START), doc.indexOf(RULES_END));
    for (const r of BUILTIN_RULES) expect(list).toContain(`| \`${r.id}\` |`);
  });

  it('detects a stale list', () => {
    const stale = doc.replace(renderRuleList(), renderRuleList(BUILTIN_RULES.slice(1)));
    expect(stale).not.toBe(renderDoc(stale));
  });

  it('has the required sections', () => {
    for (const heading of [
      '## Overview',
      '## Rule list',
      '## How to add a rule',
      '## Streaming',
      '## Known-secret matcher',
      '## False-positive handling',
      '## Allowlist configuration',
      '## Commands and exit codes',
      '## Security notes',
    ]) {
      expect(doc).toContain(heading);
    }
  });
});
