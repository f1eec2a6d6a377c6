import { CoatcheckError } from '../../../core/errors.js';

/**
 * The base64 fields of Kubernetes objects: a Secret's `data` and a ConfigMap's
 * `binaryData`. Each value is decoded, handed to `scan` (known vault secrets and detector
 * findings become tickets) or masked, and encoded again, so the object stays a valid
 * object of its kind. The `kubectl.kubernetes.io/last-applied-configuration` annotation
 * holds a whole earlier copy of the object, base64 fields included: it is rewritten too.
 */

/** Scan one decoded value; returns it with secrets replaced (the same bytes when none). */
export type ValueScan = (value: Buffer) => Promise<Buffer>;

export interface RewriteOptions {
  readonly scan: ValueScan;
  /** Data keys whose values are masked whole (policy `@mask`), or null. */
  readonly mask: ((key: string) => boolean) | null;
  /** Items of a list without `kind` (the API server omits it in typed lists) are of this kind. */
  readonly listItemKind?: 'Secret' | 'ConfigMap';
}

export interface RewriteResult {
  /** Values decoded and scanned. */
  decoded: number;
  /** Values that changed (a ticket, a mask). */
  rewritten: number;
}

/** The placeholder a masked value becomes (base64 of it is what the object carries). */
export const MASKED_DATA = '[masked by coatcheck]';
const LAST_APPLIED = 'kubectl.kubernetes.io/last-applied-configuration';
const MAX_DEPTH = 64;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function unreadable(message: string): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_K8S_RESPONSE_INVALID',
    `coatcheck: ${message}; the response was withheld`,
  );
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isObject(value: Json | undefined): value is { [key: string]: Json } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Decode, scan (or mask) and encode again every value of a base64 map. */
async function rewriteMap(
  map: { [key: string]: Json },
  options: RewriteOptions,
  result: RewriteResult,
): Promise<void> {
  for (const [key, value] of Object.entries(map)) {
    if (typeof value !== 'string' || !BASE64.test(value)) throw unreadable(`a data value is not base64`);
    result.decoded++;
    if (options.mask?.(key)) {
      map[key] = Buffer.from(MASKED_DATA).toString('base64');
      result.rewritten++;
      continue;
    }
    const raw = Buffer.from(value, 'base64');
    const clean = await options.scan(raw);
    if (!clean.equals(raw)) {
      map[key] = clean.toString('base64');
      result.rewritten++;
    }
  }
}

async function rewriteObject(
  object: { [key: string]: Json },
  kind: string | undefined,
  options: RewriteOptions,
  result: RewriteResult,
  depth: number,
): Promise<void> {
  if (kind === 'Secret' && isObject(object.data)) await rewriteMap(object.data, options, result);
  if (kind === 'Secret' && isObject(object.stringData)) {
    // Write-only, but an echo must not carry a value either.
    for (const [key, value] of Object.entries(object.stringData)) {
      if (typeof value !== 'string') throw unreadable('a stringData value is not a string');
      const map: { [key: string]: Json } = { [key]: Buffer.from(value).toString('base64') };
      await rewriteMap(map, options, result);
      object.stringData[key] = Buffer.from(map[key] as string, 'base64').toString('utf8');
    }
  }
  if (kind === 'ConfigMap' && isObject(object.binaryData))
    await rewriteMap(object.binaryData, options, result);
  const metadata = object.metadata;
  if (isObject(metadata) && isObject(metadata.annotations)) {
    const applied = metadata.annotations[LAST_APPLIED];
    if (typeof applied === 'string') {
      let parsed: Json;
      try {
        parsed = JSON.parse(applied) as Json;
      } catch {
        throw unreadable('the last-applied-configuration annotation is not JSON');
      }
      await walk(parsed, undefined, options, result, depth + 1);
      metadata.annotations[LAST_APPLIED] = `${JSON.stringify(parsed)}\n`;
    }
  }
}

async function walk(
  value: Json,
  impliedKind: string | undefined,
  options: RewriteOptions,
  result: RewriteResult,
  depth: number,
): Promise<void> {
  if (depth > MAX_DEPTH) throw unreadable('the object nests deeper than 64 levels');
  if (Array.isArray(value)) {
    for (const item of value) await walk(item, impliedKind, options, result, depth + 1);
    return;
  }
  if (!isObject(value)) return;
  const kind = typeof value.kind === 'string' ? value.kind : impliedKind;
  await rewriteObject(value, kind, options, result, depth);
  for (const [key, child] of Object.entries(value)) {
    if (child === null || typeof child !== 'object') continue;
    // A typed list's items have no kind of their own: SecretList's items are Secrets.
    const childKind =
      key === 'items' && kind !== undefined && kind.endsWith('List')
        ? kind.slice(0, -4) || undefined
        : key === 'items' && kind === undefined
          ? options.listItemKind
          : undefined;
    await walk(child, childKind, options, result, depth + 1);
  }
}

/**
 * Rewrite a JSON document (an object, a list, a Table with objects, a watch event) in
 * place of its text. Throws CC_ERR_K8S_RESPONSE_INVALID for text that is not JSON or a
 * base64 field that is not base64: what cannot be read is not sent.
 */
export async function rewriteObjectData(
  text: string,
  options: RewriteOptions,
): Promise<{ text: string; result: RewriteResult }> {
  let document: Json;
  try {
    document = JSON.parse(text) as Json;
  } catch {
    throw unreadable('the response is not JSON');
  }
  const result: RewriteResult = { decoded: 0, rewritten: 0 };
  await walk(document, undefined, options, result, 0);
  if (result.rewritten === 0 && result.decoded === 0) return { text, result };
  return { text: JSON.stringify(document), result };
}
