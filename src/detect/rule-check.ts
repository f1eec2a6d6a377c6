import { CoatcheckError } from '../core/errors.js';
import type { Rule } from './types.js';

const KEBAB = /^[a-z0-9]+(?:-[a-z0-9]+)*$/;

/**
 * Finds an unbounded quantifier (`*`, `+`, `{n,}`) outside character classes. Patterns with
 * only bounded quantifiers cannot take super-linear time per start position beyond the
 * product of their bounds, which is what keeps scanning linear in practice.
 */
export function findUnboundedQuantifier(source: string): number {
  let inClass = false;
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') {
      i++;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      continue;
    }
    if (c === '[') {
      inClass = true;
      if (source[i + 1] === '^') i++;
      continue;
    }
    if (c === '*' || c === '+') return i;
    if (c === '{' && /^\{\d+,\}/.test(source.slice(i, i + 12))) return i;
  }
  return -1;
}

function captureGroups(pattern: RegExp): number {
  return (new RegExp(`${pattern.source}|`).exec('')?.length ?? 1) - 1;
}

/** Throws CC_ERR_DETECT_RULE_INVALID naming the rule when a rule breaks an engine invariant. */
export function assertRuleValid(rule: Rule): void {
  const fail = (why: string): never => {
    throw new CoatcheckError('CC_ERR_DETECT_RULE_INVALID', `rule ${rule.id}: ${why}`, {
      details: { rule: rule.id },
    });
  };
  if (!KEBAB.test(rule.id)) fail('id must be kebab-case');
  if (captureGroups(rule.pattern) < 1) fail('pattern needs a capture group around the secret');
  if (rule.pattern.global || rule.pattern.sticky) fail('pattern must not use the g or y flag');
  const at = findUnboundedQuantifier(rule.pattern.source);
  if (at !== -1) fail(`pattern has an unbounded quantifier at offset ${at}`);
  for (const kw of rule.keywords) {
    if (kw.length === 0 || !/^[\x20-\x7e]+$/.test(kw) || kw !== kw.toLowerCase()) {
      fail('keywords must be non-empty lower-case printable ASCII');
    }
  }
  if (!Number.isInteger(rule.maxLength) || rule.maxLength < 1 || rule.maxLength > 16_384) {
    fail('maxLength must be an integer in 1..16384');
  }
}
