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
  /** Scan one decoded base64 value. */
  readonly scan: ValueScan;
  /**
   * Scan the whole JSON text (raw secrets in any other field). Keyword rules there would read
   * a base64 value under a `password` key as a secret of its own and corrupt it, so the base64
   * maps (already scanned decoded) are pinned and put back afterwards.
   */
  readonly scanText: (text: string) => Promise<string>;
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
type Path = ReadonlyArray<string | number>;
/** A map whose values are final (scanned decoded, or masked): put back after the whole-text scan. */
interface Pin {
  readonly path: Path;
  readonly values: Readonly<Record<string, Json>>;
}

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
  path: Path,
  pins: Pin[],
): Promise<void> {
  if (kind === 'Secret' && isObject(object.data)) {
    await rewriteMap(object.data, options, result);
    pins.push({ path: [...path, 'data'], values: { ...object.data } });
  }
  if (kind === 'Secret' && isObject(object.stringData)) {
    // Write-only, but an echo must not carry a value either.
    for (const [key, value] of Object.entries(object.stringData)) {
      if (typeof value !== 'string') throw unreadable('a stringData value is not a string');
      const map: { [key: string]: Json } = { [key]: Buffer.from(value).toString('base64') };
      await rewriteMap(map, options, result);
      object.stringData[key] = Buffer.from(map[key] as string, 'base64').toString('utf8');
    }
  }
  if (kind === 'ConfigMap' && isObject(object.binaryData)) {
    await rewriteMap(object.binaryData, options, result);
    pins.push({ path: [...path, 'binaryData'], values: { ...object.binaryData } });
  }
  if (kind === 'ConfigMap' && isObject(object.data) && options.mask !== null) {
    for (const key of Object.keys(object.data)) {
      if (options.mask(key)) {
        object.data[key] = MASKED_DATA;
        result.rewritten++;
      }
    }
  }
  const metadata = object.metadata;
  if (isObject(metadata) && isObject(metadata.annotations)) {
    const applied = metadata.annotations[LAST_APPLIED];
    if (typeof applied === 'string') {
      if (depth > MAX_DEPTH) throw unreadable('the object nests deeper than 64 levels');
      const inner = await rewriteText(applied, options, result, depth + 1);
      metadata.annotations[LAST_APPLIED] = `${inner}\n`;
      pins.push({
        path: [...path, 'metadata', 'annotations'],
        values: { [LAST_APPLIED]: metadata.annotations[LAST_APPLIED] },
      });
    }
  }
}

async function walk(
  value: Json,
  impliedKind: string | undefined,
  options: RewriteOptions,
  result: RewriteResult,
  depth: number,
  path: Path,
  pins: Pin[],
): Promise<void> {
  if (depth > MAX_DEPTH) throw unreadable('the object nests deeper than 64 levels');
  if (Array.isArray(value)) {
    for (const [index, item] of value.entries())
      await walk(item, impliedKind, options, result, depth + 1, [...path, index], pins);
    return;
  }
  if (!isObject(value)) return;
  const kind = typeof value.kind === 'string' ? value.kind : impliedKind;
  await rewriteObject(value, kind, options, result, depth, path, pins);
  for (const [key, child] of Object.entries(value)) {
    if (child === null || typeof child !== 'object') continue;
    // A typed list's items have no kind of their own: SecretList's items are Secrets.
    const childKind =
      key === 'items' && kind !== undefined && kind.endsWith('List')
        ? kind.slice(0, -4) || undefined
        : key === 'items' && kind === undefined
          ? options.listItemKind
          : undefined;
    await walk(child, childKind, options, result, depth + 1, [...path, key], pins);
  }
}

/** Rewrite the base64 maps, scan the whole text, put the pinned maps back. */
async function rewriteText(
  text: string,
  options: RewriteOptions,
  result: RewriteResult,
  depth: number,
  listItemKind?: 'Secret' | 'ConfigMap',
): Promise<string> {
  let document: Json;
  try {
    document = JSON.parse(text) as Json;
  } catch {
    throw unreadable('the response is not JSON');
  }
  const pins: Pin[] = [];
  await walk(
    document,
    undefined,
    { ...options, ...(listItemKind === undefined ? {} : { listItemKind }) },
    result,
    depth,
    [],
    pins,
  );
  const scanned = await options.scanText(JSON.stringify(document));
  if (pins.length === 0) return scanned;
  let after: Json;
  try {
    after = JSON.parse(scanned) as Json;
  } catch {
    throw unreadable('the scanned response is not JSON');
  }
  for (const pin of pins) {
    let at: Json | undefined = after;
    for (const step of pin.path) {
      at =
        Array.isArray(at) && typeof step === 'number'
          ? at[step]
          : isObject(at) && typeof step === 'string'
            ? at[step]
            : undefined;
    }
    if (!isObject(at)) continue;
    // Only keys the scan left in place: a key it replaced keeps the scanner's value.
    for (const [key, value] of Object.entries(pin.values)) if (key in at) at[key] = value;
  }
  return JSON.stringify(after);
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
  const result: RewriteResult = { decoded: 0, rewritten: 0 };
  const rewritten = await rewriteText(text, options, result, 0, options.listItemKind);
  return { text: rewritten, result };
}
