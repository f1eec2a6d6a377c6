/**
 * The one index of known vault secrets every front-end searches with (ADR 0021). It is
 * kept up to date from the store's change notices, one secret at a time — a secret added
 * (by an operator or found in a response) is read and indexed alone, an erased one is
 * dropped — so no request ever waits for the whole set to be rebuilt, and a change does
 * not stall the event loop:
 *
 * - the response patterns (`PatternSet`, src/gateway/inspector.ts) are segments: a large
 *   one built in slices off the request path (`buildSegmentInSlices`), and one small
 *   segment per secret added since (a few patterns: microseconds). Erased secrets are
 *   dropped from the set's view at once and from the segments at the next merge. Merges
 *   run in the background, in slices, while the set in hand keeps serving.
 * - the detector's matcher (`KnownSecretMatcher`, src/detect/known-secrets.ts: the
 *   LLM guard, the MCP gateway, the PostgreSQL output index, the log scrubber) is updated
 *   in place, with the hex forms the PostgreSQL output needs (`OutputForms`). It is filled
 *   on first use only, in slices.
 *
 * Fail closed: a change that cannot be applied (the row cannot be read or decrypted)
 * makes the index stale, and `current()` / `patterns()` throw
 * CC_ERR_GATEWAY_INSPECTION_FAILED until a full reload, retried every second, succeeds.
 * A resync or keyring notice (changes may have been missed) reloads the list, applies the
 * difference, and requests wait for it; so do they while the store's change feed is not
 * current.
 */

import { CoatcheckError } from '../core/errors.js';
import {
  createKnownSecretMatcher,
  KNOWN_SECRET_MAX_BYTES,
  KNOWN_SECRET_MIN_BYTES,
  type KnownSecretMatch,
  type KnownSecretMatcher,
} from '../detect/known-secrets.js';
import type { Store, StoreChange } from '../store/types.js';
import {
  buildSegment,
  buildSegmentInSlices,
  MIN_SCANNED_SECRET_BYTES,
  type Pattern,
  PatternScan,
  type PatternSegment,
  type PatternSet,
  patternSet,
  patternsOf,
  type ResponseInspector,
} from './inspector.js';

/** What the index reads: the vault's list of live secrets and one secret by id. */
export interface KnownSecretSource {
  knownSecrets(): Promise<ReadonlyArray<{ readonly id: string; readonly value: { reveal(): Buffer } }>>;
  knownSecret(id: string): Promise<{ readonly id: string; readonly value: { reveal(): Buffer } } | null>;
  /** Where the source can say it closes (the Vault): the shared index closes with it. */
  onClose?(fn: () => void): void;
}

/** Ids of the hex forms in the output matcher start with this (never a secret id). */
export const HEX_PREFIX = 'hex\0';

/**
 * The forms the PostgreSQL output is searched in: a matcher over every secret's forms and
 * its hex text (bytea output, `encode(…, 'hex')`), and the 6-7 byte secrets (below the
 * matcher's floor) as plain byte patterns.
 */
export interface OutputForms {
  readonly matcher: KnownSecretMatcher;
  readonly short: Map<string, readonly Buffer[]>;
  /** Whether secrets get their hex forms (only the PostgreSQL output needs them; they fill slowly). */
  hex: boolean;
}

export function createOutputForms(hex = true): OutputForms {
  return { matcher: createKnownSecretMatcher(), short: new Map(), hex };
}

/** Adds the hex forms of one secret (also when the forms are switched to hex after it was added). */
function addHexForms(forms: OutputForms, id: string, value: Buffer): void {
  if (value.length < MIN_SCANNED_SECRET_BYTES || value.length > KNOWN_SECRET_MAX_BYTES / 2) return;
  if (forms.matcher.has(`${HEX_PREFIX}l${id}`)) return;
  const hex = value.toString('hex');
  forms.matcher.add(`${HEX_PREFIX}l${id}`, hex);
  if (/[a-f]/.test(hex)) forms.matcher.add(`${HEX_PREFIX}u${id}`, hex.toUpperCase());
}

/** Adds one secret's forms (what `createOutputIndex` did per secret). */
export function addOutputForms(forms: OutputForms, id: string, value: Buffer): void {
  if (value.length < MIN_SCANNED_SECRET_BYTES) return;
  if (value.length > KNOWN_SECRET_MAX_BYTES / 2) {
    forms.matcher.add(id, value);
    return;
  }
  // Short ones in every form the known-secret inspector replaces (base64, JSON, url).
  if (value.length < KNOWN_SECRET_MIN_BYTES)
    forms.short.set(
      id,
      patternsOf({ id, value }).map((p) => p.bytes),
    );
  else forms.matcher.add(id, value);
  if (forms.hex) addHexForms(forms, id, value);
}

export function removeOutputForms(forms: OutputForms, id: string): void {
  forms.matcher.remove(id);
  forms.matcher.remove(`${HEX_PREFIX}l${id}`);
  forms.matcher.remove(`${HEX_PREFIX}u${id}`);
  forms.short.delete(id);
}

/** The output matcher seen without its hex forms: findings name vault secrets only. */
function secretsOnly(matcher: KnownSecretMatcher): KnownSecretMatcher {
  return {
    add: () => {
      throw new Error('read-only view');
    },
    remove: () => {
      throw new Error('read-only view');
    },
    has: (id) => !id.startsWith(HEX_PREFIX) && matcher.has(id),
    get size() {
      return matcher.size;
    },
    get maxPatternLength() {
      return matcher.maxPatternLength;
    },
    find(input, mode, bytes) {
      return withoutHex(matcher.find(input, mode, bytes));
    },
    findForms(input, mode, bytes) {
      return withoutHex(matcher.findForms(input, mode, bytes));
    },
  };
}

function withoutHex(found: KnownSecretMatch[]): KnownSecretMatch[] {
  return found.some((m) => m.secretId.startsWith(HEX_PREFIX))
    ? found.filter((m) => !m.secretId.startsWith(HEX_PREFIX))
    : found;
}

export interface KnownSecretIndexOptions {
  /** Most small segments kept before they are merged (each costs one pass over a response). */
  readonly maxSmallSegments?: number;
  /** Work per slice of a background build, in ms (the event loop is free in between). */
  readonly sliceMs?: number;
  /** How long a failed reload waits before the next try. */
  readonly retryMs?: number;
  /** More secrets than this missing after a reload are indexed as one segment built in slices (64). */
  readonly bulkAdd?: number;
  /** Told (by class name, never a value) when a change could not be applied. */
  readonly onError?: (error: unknown) => void;
}

export interface KnownSecretIndex {
  /**
   * The response patterns, once every change heard before the call is applied (and the
   * change feed is current). Throws CC_ERR_GATEWAY_INSPECTION_FAILED while stale.
   */
  current(): Promise<PatternSet>;
  /** The newest applied patterns, synchronously (a change being read may be missing). Throws while stale. */
  patterns(): PatternSet;
  /** The output forms (filled on first call, in slices: wait for `formsReady()`). Check `patterns()` before use. */
  outputForms(): OutputForms;
  /** Resolves once the output forms hold every secret the patterns held when they were first asked for. */
  formsReady(): Promise<void>;
  /** A matcher over the secrets' forms (no hex forms), for detectors; filled on first call. */
  secretMatcher(): KnownSecretMatcher;
  /**
   * Whether the index is stale now (a change could not be applied, or a secret could not be
   * indexed): `current()` and `patterns()` throw then, and a consumer that cannot refuse
   * (the log scrubber) must act as if any secret may be missing from the matcher.
   */
  readonly stale: boolean;
  /** Number of live secrets indexed. */
  readonly size: number;
  /** Segments in the pattern set now (1 after a merge). */
  readonly segments: number;
  /** Resolves when no change or merge is in progress (tests, benches). */
  settled(): Promise<void>;
  close(): void;
}

/** Secrets handled per slice when patterns are made or the output matcher filled in bulk. */
const SECRETS_PER_SLICE = 32;

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Every pattern of `list`, made in slices. */
async function patternsInSlices(list: Iterable<readonly [string, Buffer]>): Promise<Pattern[]> {
  const out: Pattern[] = [];
  let n = 0;
  for (const [id, value] of list) {
    for (const p of patternsOf({ id, value })) out.push(p);
    if (++n % SECRETS_PER_SLICE === 0) await yieldToLoop();
  }
  return out;
}

/**
 * The index's matcher over every secret's forms, once every change heard before the call is
 * applied to it (for scrubbing what is stored or shown: recordings, approval previews).
 * Throws CC_ERR_GATEWAY_INSPECTION_FAILED while the index is stale: the caller refuses.
 */
export async function currentSecretMatcher(index: KnownSecretIndex): Promise<KnownSecretMatcher> {
  // Asked for first: the first call starts filling the forms that formsReady() waits for.
  const matcher = index.secretMatcher();
  await index.current();
  await index.formsReady();
  return matcher;
}

/** The index's patterns and secret matcher, both current when resolved (refused while stale). */
export async function currentKnownSecrets(
  index: KnownSecretIndex,
): Promise<{ patterns: PatternSet; matcher: KnownSecretMatcher }> {
  const matcher = await currentSecretMatcher(index);
  return { patterns: await index.current(), matcher };
}

export function createKnownSecretIndex(
  source: KnownSecretSource,
  store: Pick<Store, 'subscribe' | 'feedCurrent'>,
  options: KnownSecretIndexOptions = {},
): KnownSecretIndex {
  const maxSmall = options.maxSmallSegments ?? 8;
  const sliceMs = options.sliceMs ?? 0.5;
  const retryMs = options.retryMs ?? 1000;
  const bulkAdd = options.bulkAdd ?? 64;
  /** Live secrets by id (values revealed: the patterns are made of them anyway). */
  const values = new Map<string, Buffer>();
  /** Ids erased: a read of one that finishes after its erasure is not indexed. Ids are never reused. */
  const erased = new Set<string>();
  let segments: PatternSegment[] = [];
  /** Ids still in a segment but no longer live. */
  let dropped = new Set<string>();
  let set: PatternSet = patternSet([]);
  let forms: OutputForms | null = null;
  let formsFilled: Promise<void> = Promise.resolve();
  let secretView: KnownSecretMatcher | null = null;
  let stale: CoatcheckError | null = null;
  let retry: NodeJS.Timeout | null = null;
  let merging: Promise<void> | null = null;
  let reloading: Promise<void> | null = null;
  let closed = false;
  /** Changes being read (requests wait for them); merges are not among them. */
  const inFlight = new Set<Promise<void>>();

  const publish = () => {
    set = patternSet(segments, dropped);
  };

  /**
   * The vault refuses values over KNOWN_SECRET_MAX_BYTES (CC_ERR_SECRET_TOO_LARGE); one that
   * reaches the index anyway (a row written before that bound, restored, or by another
   * writer) cannot be held by the detectors' matcher. Refused here, by id: the index goes
   * stale until the secret is erased, rather than the detectors silently missing it.
   */
  const indexable = (id: string, value: Buffer): void => {
    if (value.length > KNOWN_SECRET_MAX_BYTES) {
      throw new CoatcheckError(
        'CC_ERR_DETECT_KNOWN_SECRET_TOO_LARGE',
        `secret ${id} is ${value.length} bytes, over the ${KNOWN_SECRET_MAX_BYTES} the detectors can look for; erase it (coatcheck secret rm)`,
        { details: { secretId: id } },
      );
    }
  };

  const fail = (error: unknown) => {
    stale = new CoatcheckError(
      'CC_ERR_GATEWAY_INSPECTION_FAILED',
      'coatcheck: the secrets to look for in responses could not be loaded; refused until they can',
      { cause: error },
    );
    options.onError?.(error);
    if (retry === null && !closed) {
      retry = setTimeout(() => {
        retry = null;
        void reload();
      }, retryMs).unref();
    }
  };

  const track = (work: Promise<void>): Promise<void> => {
    const done = work.catch((error: unknown) => fail(error));
    inFlight.add(done);
    void done.finally(() => inFlight.delete(done));
    return done;
  };

  const addForms = (target: OutputForms, id: string, value: Buffer) => {
    if (target.matcher.has(id) || target.short.has(id)) return;
    // A secret the detectors' matcher cannot hold would be missing from the LLM guard, MCP,
    // the log scrubber and recordings: the index goes stale (fail closed), never silently short.
    addOutputForms(target, id, value);
  };

  const indexOne = (id: string, value: Buffer): void => {
    if (values.has(id) || erased.has(id)) return;
    indexable(id, value);
    values.set(id, value);
    const patterns = patternsOf({ id, value });
    if (patterns.length > 0) segments = [...segments, buildSegment(patterns)];
    if (forms !== null) addForms(forms, id, value);
  };

  /** Forgets `id` at once: the set in hand stops replacing it, the segments lose it at the next merge. */
  const dropOne = (id: string): void => {
    if (!values.delete(id)) return;
    dropped = new Set(dropped).add(id);
    if (forms !== null) removeOutputForms(forms, id);
  };

  const loadOne = async (id: string): Promise<void> => {
    const secret = await source.knownSecret(id);
    if (secret === null) return;
    indexOne(secret.id, secret.value.reveal());
    publish();
    scheduleMerge();
  };

  /** Reads the whole list and applies the difference (the first load, a resync, a keyring change, a retry). */
  const reload = (): Promise<void> => {
    if (reloading !== null) return reloading;
    const work = (async () => {
      const live = await source.knownSecrets();
      const ids = new Set<string>();
      const missing: Array<readonly [string, Buffer]> = [];
      let n = 0;
      for (const secret of live) {
        if (++n % (SECRETS_PER_SLICE * 32) === 0) await yieldToLoop();
        ids.add(secret.id);
        const value = secret.value.reveal();
        indexable(secret.id, value);
        const held = values.get(secret.id);
        if (held?.equals(value)) continue;
        // A value changed under the same id (the vault does not do this today): drop, then add anew.
        if (held !== undefined) dropOne(secret.id);
        missing.push([secret.id, value]);
      }
      for (const id of [...values.keys()]) if (!ids.has(id)) dropOne(id);
      if (missing.length > bulkAdd) {
        const segment = await buildSegmentInSlices(await patternsInSlices(missing), sliceMs);
        // The output forms first: a path that consults them before scanning (PostgreSQL)
        // then finds a candidate its scan cannot replace yet and refuses, never the reverse.
        const target = forms;
        if (target !== null) {
          await fillForms(target, missing, (id) => !erased.has(id));
          for (const [id] of missing) if (erased.has(id)) removeOutputForms(target, id);
        }
        for (const [id, value] of missing) {
          // Indexed alone meanwhile (a duplicate pattern only repeats a match), or erased since.
          if (erased.has(id)) dropped = new Set(dropped).add(id);
          else if (!values.has(id)) values.set(id, value);
        }
        segments = [...segments, segment];
      } else {
        for (const [id, value] of missing) indexOne(id, value);
      }
      stale = null;
      publish();
      scheduleMerge();
    })().finally(() => {
      reloading = null;
    });
    reloading = track(work);
    return reloading;
  };

  const fillForms = async (
    target: OutputForms,
    list: Iterable<readonly [string, Buffer]>,
    wanted: (id: string, value: Buffer) => boolean = (id, value) => values.get(id) === value,
  ) => {
    let n = 0;
    for (const [id, value] of list) {
      if (!wanted(id, value)) continue;
      addForms(target, id, value);
      if (++n % SECRETS_PER_SLICE === 0) await yieldToLoop();
    }
  };

  /** Merges the small segments (or everything, when they grew large or many secrets were erased) in the background. */
  const scheduleMerge = () => {
    if (merging !== null || closed) return;
    const tooMany = segments.length - 1 > maxSmall;
    const heavyDrops = dropped.size > 64 && dropped.size * 8 > values.size;
    if (!tooMany && !heavyDrops) return;
    merging = merge()
      .catch((error: unknown) => options.onError?.(error))
      .finally(() => {
        merging = null;
        scheduleMerge();
      });
  };

  const merge = async (): Promise<void> => {
    const taken = segments;
    const base = taken[0]!;
    const rest = taken.slice(1);
    const restPatterns = rest.reduce((n, g) => n + g.patterns.length, 0);
    const droppedAtStart = dropped;
    const whole = droppedAtStart.size > 64 || restPatterns * 4 > base.patterns.length;
    const merged = whole
      ? await buildSegmentInSlices(await patternsInSlices([...values]), sliceMs)
      : await buildSegmentInSlices(
          rest.flatMap((g) => g.patterns.filter((p) => !droppedAtStart.has(p.secretId))),
          sliceMs,
        );
    if (closed) return;
    // Segments added while merging stay after the merged one; ids erased since stay dropped.
    const added = segments.filter((g) => !taken.includes(g));
    segments = whole ? [merged, ...added] : [base, merged, ...added];
    // Ids dropped before a whole merge are in no segment now (ids are never reused).
    if (whole) dropped = new Set([...dropped].filter((id) => !droppedAtStart.has(id)));
    publish();
  };

  const unsubscribe = store.subscribe((change: StoreChange) => {
    if (closed) return;
    switch (change.type) {
      case 'secret.added':
        void track(loadOne(change.id));
        return;
      case 'secret.erased':
        erased.add(change.id);
        dropOne(change.id);
        publish();
        scheduleMerge();
        return;
      case 'keys.rotated':
      case 'resync':
        void reload();
        return;
      default:
        // Revocations, approvals, connections, workflows, bindings: no value changes.
        return;
    }
  });

  let started: Promise<void> | null = null;
  const start = () => {
    started ??= reload();
    return started;
  };

  /** The forms without hex (the detectors'), made and filled on first use. */
  const plainForms = (): OutputForms => {
    if (forms === null) {
      const target = createOutputForms(false);
      forms = target;
      // Not among the changes `current()` waits for: the response patterns do not need the
      // forms, and filling them at 100k secrets takes long (hex forms are low in entropy).
      formsFilled = (async () => {
        await start();
        await fillForms(target, [...values]);
      })().catch((error: unknown) => fail(error));
    }
    return forms;
  };

  return {
    async current() {
      await start();
      if (!store.feedCurrent()) await reload();
      // Every change heard before this call (being read now) is applied first.
      if (inFlight.size > 0) await Promise.all([...inFlight]);
      if (stale !== null) throw stale;
      return set;
    },
    patterns() {
      void start();
      if (stale !== null) throw stale;
      return set;
    },
    outputForms() {
      const target = plainForms();
      if (!target.hex) {
        // PostgreSQL asks: the hex forms of every secret, in slices (formsReady waits).
        target.hex = true;
        const before = formsFilled;
        formsFilled = (async () => {
          await before;
          let n = 0;
          for (const [id, value] of [...values]) {
            if (values.get(id) !== value) continue;
            // Bounded by addHexForms (hex of at most half the matcher's bound); a throw makes the index stale.
            addHexForms(target, id, value);
            if (++n % SECRETS_PER_SLICE === 0) await yieldToLoop();
          }
        })().catch((error: unknown) => fail(error));
      }
      return target;
    },
    async formsReady() {
      await formsFilled;
      if (stale !== null) throw stale;
    },
    secretMatcher() {
      secretView ??= secretsOnly(plainForms().matcher);
      return secretView;
    },
    get stale() {
      return stale !== null;
    },
    get size() {
      return values.size;
    },
    get segments() {
      return segments.length;
    },
    async settled() {
      await start();
      while (inFlight.size > 0 || merging !== null) await Promise.all([...inFlight, merging, formsFilled]);
      await formsFilled;
    },
    close() {
      closed = true;
      unsubscribe();
      if (retry !== null) clearTimeout(retry);
    },
  };
}

/**
 * One index per vault: every front-end of a process shares it. The tuning options apply
 * when it is made, by the first caller; every caller's `onError` is told of every failure
 * (the log scrubber may make the index before the front-end that logs its failures asks).
 */
const shared = new WeakMap<object, { index: KnownSecretIndex; onError: Set<(error: unknown) => void> }>();

export function sharedKnownSecretIndex(
  vault: KnownSecretSource,
  store: Pick<Store, 'subscribe' | 'feedCurrent'>,
  options?: KnownSecretIndexOptions,
): KnownSecretIndex {
  let entry = shared.get(vault);
  if (entry === undefined) {
    const handlers = new Set<(error: unknown) => void>();
    const index = createKnownSecretIndex(vault, store, {
      ...options,
      onError: (error) => {
        for (const handler of handlers) {
          try {
            handler(error);
          } catch {
            // One failing handler does not keep the others from being told.
          }
        }
      },
    });
    entry = { index, onError: handlers };
    shared.set(vault, entry);
    vault.onClose?.(() => closeSharedKnownSecretIndex(vault));
  }
  if (options?.onError !== undefined) entry.onError.add(options.onError);
  return entry.index;
}

/** Stops the shared index of `vault`, if one was made (the server context does, on close). */
export function closeSharedKnownSecretIndex(vault: KnownSecretSource): void {
  shared.get(vault)?.index.close();
  shared.delete(vault);
}

/**
 * The known-secret inspector over the shared index: each response is scanned with the
 * patterns in hand once every change heard before it began is applied.
 */
export function createIndexedInspector(index: KnownSecretIndex): ResponseInspector {
  return {
    name: 'known-secrets',
    async begin(context) {
      return new PatternScan(await index.current(), context);
    },
  };
}
