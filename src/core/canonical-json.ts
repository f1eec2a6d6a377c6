/**
 * JSON with object keys sorted at every level: the byte form the audit hash chain covers.
 * Every byte of it is fixed by records already chained: it must give the same output as
 * `canonicalJsonReference` (canonical-json.test.ts holds it to that). For speed (a batched
 * `postgres.query` record holds hundreds of values) the value is copied with its keys in
 * sorted order and the copy given to the engine's JSON.stringify in one call; a value the
 * copy cannot express exactly (an array with holes, an integer-like or `__proto__` key:
 * JSON.stringify would not keep their place) takes the reference path.
 */
export function canonicalJson(value: unknown): string {
  const copy = sortedCopy(value);
  return copy === INEXPRESSIBLE ? canonicalJsonReference(value) : JSON.stringify(copy);
}

const INEXPRESSIBLE = Symbol('inexpressible');

/** Keys JSON.stringify would put first whatever their insertion order (array indices), and `__proto__`. */
function movable(key: string): boolean {
  return key === '__proto__' || (key.length > 0 && key.length <= 10 && String(Number(key)) === key);
}

/** What JSON.stringify turns into the reference's form, or INEXPRESSIBLE. */
function sortedCopy(value: unknown): unknown {
  if (value === null) return null;
  switch (typeof value) {
    case 'object':
      break;
    case 'string':
    case 'number':
    case 'boolean':
      return value;
    default:
      // undefined, functions and symbols: the reference writes null (and keeps an object's key).
      if (typeof value === 'bigint') return INEXPRESSIBLE;
      return null;
  }
  if (Array.isArray(value)) {
    const out: unknown[] = new Array(value.length);
    for (let i = 0; i < value.length; i++) {
      const v: unknown = value[i];
      if (v === undefined && !(i in value)) return INEXPRESSIBLE; // a hole: the reference leaves it empty
      const c = sortedCopy(v);
      if (c === INEXPRESSIBLE) return INEXPRESSIBLE;
      out[i] = c;
    }
    return out;
  }
  const record = value as Record<string, unknown>;
  const keys = sortKeys(Object.keys(record));
  const out: Record<string, unknown> = {};
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i]!;
    const v = record[key];
    if (v === undefined) continue;
    if (movable(key)) return INEXPRESSIBLE;
    const c = sortedCopy(v);
    if (c === INEXPRESSIBLE) return INEXPRESSIBLE;
    out[key] = c;
  }
  return out;
}

/**
 * Keys in UTF-16 code unit order, as the reference's `<` comparison orders them. A record's
 * object has a few keys: sorted in place by insertion (the built-in sort allocated a work
 * copy for every object of every audit record).
 */
function sortKeys(keys: string[]): string[] {
  if (keys.length > 32) return keys.sort();
  for (let i = 1; i < keys.length; i++) {
    const key = keys[i]!;
    let j = i - 1;
    for (; j >= 0 && keys[j]! > key; j--) keys[j + 1] = keys[j]!;
    keys[j + 1] = key;
  }
  return keys;
}

/** The definition: what `canonicalJson` gives, byte for byte. */
export function canonicalJsonReference(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    const text = JSON.stringify(value);
    return text === undefined ? 'null' : text;
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJsonReference).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJsonReference(v)}`).join(',')}}`;
}
