import { CoatcheckError } from '../core/errors.js';

/** Placeholder written where a masked value stood. */
export const MASKED_VALUE = '***';

/**
 * A case-insensitive matcher for field or column name globs (`*email*`, `ssn`, `card_?`),
 * shared by every front-end that applies masking obligations (connection rules, policy
 * `@mask`).
 */
export function fieldMatcher(patterns: readonly string[]): (name: string) => boolean {
  if (patterns.length === 0) return () => false;
  const source = patterns
    .map((p) =>
      p
        .split('')
        .map((ch) => (ch === '*' ? '.*' : ch === '?' ? '.' : ch.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
        .join(''),
    )
    .join('|');
  const re = new RegExp(`^(?:${source})$`, 'i');
  return (name) => re.test(name);
}

const MAX_DEPTH = 64;

/**
 * Mask every value whose key matches, at any depth, in a JSON document. Throws
 * CC_ERR_GATEWAY_MASK_UNSUPPORTED when the text is not JSON (it cannot be masked, so it
 * must not be sent).
 */
export function maskJson(text: string, matches: (name: string) => boolean): string {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    throw new CoatcheckError(
      'CC_ERR_GATEWAY_MASK_UNSUPPORTED',
      'policy masks fields of this response, and its body is not valid JSON',
    );
  }
  const walk = (value: unknown, depth: number): unknown => {
    if (depth > MAX_DEPTH) {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_MASK_UNSUPPORTED',
        `policy masks fields of this response, and it nests deeper than ${MAX_DEPTH}`,
      );
    }
    if (Array.isArray(value)) return value.map((item) => walk(item, depth + 1));
    if (value !== null && typeof value === 'object') {
      const out: Record<string, unknown> = {};
      for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
        out[key] = matches(key) && item !== null ? MASKED_VALUE : walk(item, depth + 1);
      }
      return out;
    }
    return value;
  };
  return JSON.stringify(walk(document, 0));
}
