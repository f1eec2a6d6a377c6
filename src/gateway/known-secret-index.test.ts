import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KNOWN_SECRET_MAX_BYTES } from '../detect/known-secrets.js';
import type { StoreChange } from '../store/types.js';
import { MAX_SECRET_BYTES } from '../vault/model.js';
import {
  buildPatterns,
  type KnownSecret,
  MIN_SCANNED_SECRET_BYTES,
  PatternScan,
  type PatternSet,
} from './inspector.js';
import {
  addOutputForms,
  closeSharedKnownSecretIndex,
  createKnownSecretIndex,
  createOutputForms,
  HEX_PREFIX,
  sharedKnownSecretIndex,
} from './known-secret-index.js';

// Differential tests of the incremental known-secret index (ADR 0021): after any sequence
// of secrets added and erased, read or not in between, merged or not, a response scanned
// with the index's patterns comes out exactly as with a set built from scratch over the
// live secrets (itself checked against brute force in inspector-hostile.test.ts), however
// the body is split; and the detector's matcher finds exactly what a fresh one finds.

/** Tickets are written with characters the secrets below never use. */
const ticketOf = (id: string) => `<${id}>`;

/** The store's change feed as the index sees it: subscribe, and whether it is current. */
function feed() {
  const listeners = new Set<(change: StoreChange) => void>();
  let current = true;
  return {
    subscribe(listener: (change: StoreChange) => void) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    feedCurrent: () => current,
    emit(change: StoreChange) {
      for (const listener of listeners) listener(change);
    },
    setCurrent(value: boolean) {
      current = value;
    },
  };
}

/** The vault as the index reads it, over a map; `broken` makes every read throw. */
function vaultOf(live: Map<string, Buffer>) {
  const state = { broken: false, reads: 0, oneReads: 0 };
  const view = (id: string, value: Buffer) => ({ id, value: { reveal: () => value } });
  return {
    state,
    source: {
      async knownSecrets() {
        state.reads++;
        await Promise.resolve();
        if (state.broken) throw new Error('damaged row');
        return [...live].map(([id, value]) => view(id, value));
      },
      async knownSecret(id: string) {
        state.oneReads++;
        await new Promise((resolve) => setImmediate(resolve));
        if (state.broken) throw new Error('damaged row');
        const value = live.get(id);
        return value === undefined ? null : view(id, value);
      },
    },
  };
}

async function scanWith(set: PatternSet, input: Buffer, cuts: readonly number[]): Promise<string> {
  const scan = new PatternScan(set, { reissue: async (id) => ticketOf(id) });
  const out: Buffer[] = [];
  let at = 0;
  for (const cut of [...new Set(cuts)].sort((a, b) => a - b)) {
    if (cut <= at || cut >= input.length) continue;
    out.push(await scan.push(input.subarray(at, cut)));
    at = cut;
  }
  out.push(await scan.push(input.subarray(at)));
  out.push(await scan.end());
  return Buffer.concat(out).toString('latin1');
}

/** Secrets over a tiny alphabet, so fragments of them overlap, nest and abut all the time. */
const secretArb = fc
  .array(fc.constantFrom('a', 'b', 'c', '_', '%', '2'), {
    minLength: MIN_SCANNED_SECRET_BYTES,
    maxLength: 12,
  })
  .map((chars) => chars.join(''));

type Op = { readonly add: string } | { readonly erase: number } | { readonly resync: true };

const scenario = fc
  .tuple(
    fc.uniqueArray(secretArb, { minLength: 1, maxLength: 6 }),
    fc.array(
      fc.oneof(
        { weight: 4, arbitrary: fc.nat().map((n) => ({ add: n })) },
        { weight: 2, arbitrary: fc.nat().map((n) => ({ erase: n })) },
        { weight: 1, arbitrary: fc.constant({ resync: true as const }) },
      ),
      { minLength: 1, maxLength: 10 },
    ),
    fc.array(fc.boolean(), { minLength: 10, maxLength: 10 }),
    fc.integer({ min: 0, max: 3 }),
  )
  .chain(([values, rawOps, reads, initial]) => {
    const ops: Op[] = rawOps.map((o) =>
      'add' in o ? { add: values[o.add % values.length]! } : 'erase' in o ? { erase: o.erase } : o,
    );
    const fragment = fc.oneof(
      fc.constantFrom(...values),
      fc
        .tuple(fc.constantFrom(...values), fc.nat(), fc.nat())
        .map(([v, a, b]) => v.slice(Math.min(a, b) % v.length, Math.max(a, b) % (v.length + 1))),
      // A secret escaped (every character, percent) or base64-encoded at some offset.
      fc
        .constantFrom(...values)
        .map((v) => [...Buffer.from(v)].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('')),
      fc
        .tuple(fc.constantFrom(...values), fc.integer({ min: 0, max: 2 }))
        .map(([v, pad]) => Buffer.from(`${'x'.repeat(pad)}${v}`).toString('base64')),
      fc.constantFrom('a', 'b', '_', '%', ' ', '\n', '\\u0061'),
    );
    return fc.tuple(
      fc.constant(values),
      fc.constant(initial),
      fc.constant(ops),
      fc.constant(reads),
      fc.array(fragment, { maxLength: 12 }).map((parts) => Buffer.from(parts.join(''))),
      fc.array(fc.nat(), { maxLength: 6 }),
    );
  });

describe('known-secret index: incremental against a set built from scratch', () => {
  it('scans every response as a fresh set would, after any adds, erasures and resyncs, split anywhere', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async ([values, initial, ops, reads, input, rawCuts]) => {
        const live = new Map<string, Buffer>();
        let next = 0;
        // Some secrets exist before the index first loads (the bulk path when many).
        for (let i = 0; i < initial; i++) live.set(`s${next++}`, Buffer.from(values[i % values.length]!));
        const bus = feed();
        const vault = vaultOf(live);
        const index = createKnownSecretIndex(vault.source, bus, {
          maxSmallSegments: 2,
          sliceMs: 0,
          bulkAdd: 1,
        });
        const forms = index.outputForms();
        await index.current();
        await index.formsReady();
        for (const [k, op] of ops.entries()) {
          if ('add' in op) {
            const id = `s${next++}`;
            live.set(id, Buffer.from(op.add));
            bus.emit({ type: 'secret.added', id });
          } else if ('erase' in op) {
            const ids = [...live.keys()];
            if (ids.length === 0) continue;
            const id = ids[op.erase % ids.length]!;
            live.delete(id);
            bus.emit({ type: 'secret.erased', id });
          } else bus.emit({ type: 'resync' });
          if (reads[k]) await index.current();
        }
        const set = await index.current();
        const secrets: KnownSecret[] = [...live].map(([id, value]) => ({ id, value }));
        const cuts = rawCuts.map((c) => (input.length === 0 ? 0 : c % input.length));
        const expected = await scanWith(buildPatterns(secrets), input, []);
        expect(await scanWith(set, input, cuts)).toBe(expected);
        // The detector's forms: the same findings as forms made from scratch.
        const fresh = createOutputForms();
        for (const s of secrets) addOutputForms(fresh, s.id, s.value);
        const text = input.toString('latin1');
        const key = (m: { secretId: string; start: number; end: number; encoding: string }) =>
          `${m.secretId}:${m.start}:${m.end}:${m.encoding}`;
        expect(forms.matcher.find(text, 'bytes', input).map(key).sort()).toEqual(
          fresh.matcher.find(text, 'bytes', input).map(key).sort(),
        );
        expect([...forms.short.keys()].sort()).toEqual([...fresh.short.keys()].sort());
        // After the background merges, still the same.
        await index.settled();
        expect(await scanWith(await index.current(), input, cuts)).toBe(expected);
        index.close();
      }),
      { numRuns: 300 },
    );
  });
});

describe('known-secret index: segments', () => {
  const target = 'Xtarget-secret-value-0123456789';
  const chosen = `ghp_${'A'.repeat(35)}X`;

  /** Many secrets loaded at start: they become one segment built in slices. */
  function filler(live: Map<string, Buffer>, n: number) {
    for (let i = 0; i < n; i++) live.set(`f${i}`, Buffer.from(`filler-${i}-value-zz`));
  }

  it('merges matches across segments: a value added later that ends where an older one begins leaks nothing', async () => {
    const live = new Map<string, Buffer>([['target', Buffer.from(target)]]);
    filler(live, 100);
    const bus = feed();
    const index = createKnownSecretIndex(vaultOf(live).source, bus, { maxSmallSegments: 8 });
    await index.current();
    expect(index.segments).toBe(1);
    // The agent makes the vault learn a value overlapping the target (a found secret).
    live.set('chosen', Buffer.from(chosen));
    bus.emit({ type: 'secret.added', id: 'chosen' });
    const set = await index.current();
    expect(index.segments).toBe(2);
    const body = Buffer.from(`{"out":"${chosen}${target.slice(1)}"}`);
    for (const cut of [0, 9, 20, 47, 50, body.length - 3]) {
      const out = await scanWith(set, body, [cut]);
      expect(out).toBe('{"out":"<chosen><target>"}');
      expect(out).not.toContain(target.slice(1, 9));
    }
    // And the other way round: the older value ends where the newer begins.
    const reverse = Buffer.from(`[${target}${chosen.slice(1)}]`);
    live.set('chosen2', Buffer.from(`${target.slice(-6)}${chosen}`));
    bus.emit({ type: 'secret.added', id: 'chosen2' });
    const out = await scanWith(await index.current(), Buffer.from(`[${target}${chosen}]`), [12]);
    expect(out).not.toContain(target.slice(-9));
    expect(await scanWith(await index.current(), reverse, [])).not.toContain(target.slice(1, 9));
    index.close();
  });

  it('stops replacing an erased secret at once, and forgets it at the next merge', async () => {
    const live = new Map<string, Buffer>();
    filler(live, 80);
    const bus = feed();
    const index = createKnownSecretIndex(vaultOf(live).source, bus, { maxSmallSegments: 1 });
    const before = await index.current();
    expect((await scanWith(before, Buffer.from('x filler-3-value-zz x'), [])).toString()).toBe('x <f3> x');
    live.delete('f3');
    bus.emit({ type: 'secret.erased', id: 'f3' });
    expect(await scanWith(index.patterns(), Buffer.from('x filler-3-value-zz x'), [])).toBe(
      'x filler-3-value-zz x',
    );
    expect(index.patterns().dropped.has('f3')).toBe(true);
    // Enough erasures make the whole set be rebuilt without them.
    for (let i = 10; i < 75; i++) {
      live.delete(`f${i}`);
      bus.emit({ type: 'secret.erased', id: `f${i}` });
    }
    await index.settled();
    // The merge began with f3 … f73 dropped; f74, erased while it was built, stays dropped.
    expect([...index.patterns().dropped]).toEqual(['f74']);
    expect(index.segments).toBe(1);
    expect(index.patterns().segments[0]!.patterns.some((p) => p.secretId === 'f3')).toBe(false);
    expect(await scanWith(index.patterns(), Buffer.from('filler-4-value-zz'), [])).toBe('<f4>');
    index.close();
  });

  it('keeps serving the old set while a merge is built, and a secret added meanwhile is found at once', async () => {
    const live = new Map<string, Buffer>();
    filler(live, 200);
    const bus = feed();
    const index = createKnownSecretIndex(vaultOf(live).source, bus, { maxSmallSegments: 1, sliceMs: 0 });
    await index.current();
    for (const id of ['n1', 'n2', 'n3']) {
      live.set(id, Buffer.from(`new-secret-${id}-abcdef`));
      bus.emit({ type: 'secret.added', id });
    }
    // Merges are under way (not awaited by current()); every added secret is found now.
    const set = await index.current();
    expect(await scanWith(set, Buffer.from('new-secret-n3-abcdef new-secret-n1-abcdef'), [5])).toBe(
      '<n3> <n1>',
    );
    await index.settled();
    expect(index.segments).toBeLessThanOrEqual(2);
    expect(await scanWith(await index.current(), Buffer.from('new-secret-n2-abcdef'), [])).toBe('<n2>');
    index.close();
  });
});

describe('known-secret index: fails closed', () => {
  it('refuses while a change cannot be read, and serves again once a reload succeeds', async () => {
    const live = new Map<string, Buffer>([['a', Buffer.from('alpha-secret-0001')]]);
    const bus = feed();
    const vault = vaultOf(live);
    const errors: unknown[] = [];
    const index = createKnownSecretIndex(vault.source, bus, { retryMs: 20, onError: (e) => errors.push(e) });
    await index.current();
    vault.state.broken = true;
    live.set('b', Buffer.from('bravo-secret-0002'));
    bus.emit({ type: 'secret.added', id: 'b' });
    await expect(index.current()).rejects.toMatchObject({ code: 'CC_ERR_GATEWAY_INSPECTION_FAILED' });
    expect(() => index.patterns()).toThrow(/could not be loaded/);
    expect(errors.length).toBeGreaterThan(0);
    // A message names no value.
    await index.current().catch((error: Error) => expect(error.message).not.toContain('bravo'));
    vault.state.broken = false;
    let set: PatternSet | null = null;
    for (let i = 0; i < 100 && set === null; i++) {
      set = await index.current().catch(() => null);
      if (set === null) await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(set).not.toBeNull();
    expect(await scanWith(set!, Buffer.from('bravo-secret-0002'), [])).toBe('<b>');
    index.close();
  });

  it('waits for a reload while the change feed is not current (changes may be missed)', async () => {
    const live = new Map<string, Buffer>([['a', Buffer.from('alpha-secret-0001')]]);
    const bus = feed();
    const vault = vaultOf(live);
    const index = createKnownSecretIndex(vault.source, bus);
    await index.current();
    bus.setCurrent(false);
    // Added on another replica while this one's feed was down: no notice arrives.
    live.set('b', Buffer.from('bravo-secret-0002'));
    expect(await scanWith(await index.current(), Buffer.from('bravo-secret-0002'), [])).toBe('<b>');
    bus.setCurrent(true);
    const reads = vault.state.reads;
    await index.current();
    expect(vault.state.reads).toBe(reads);
    index.close();
  });

  it('reads only the secret a notice names, never the whole list, for an addition', async () => {
    const live = new Map<string, Buffer>([['a', Buffer.from('alpha-secret-0001')]]);
    const bus = feed();
    const vault = vaultOf(live);
    const index = createKnownSecretIndex(vault.source, bus);
    await index.current();
    const reads = vault.state.reads;
    live.set('b', Buffer.from('bravo-secret-0002'));
    bus.emit({ type: 'secret.added', id: 'b' });
    // Revocations and other notices change no value: nothing is read.
    bus.emit({ type: 'ticket.revoked', ids: ['tkt_1'] });
    bus.emit({ type: 'agent.revoked', id: 'agt_1' });
    await index.current();
    expect(vault.state.reads).toBe(reads);
    expect(vault.state.oneReads).toBe(1);
    index.close();
  });

  it('an erasure that arrives while the secret is being read keeps it out', async () => {
    const live = new Map<string, Buffer>();
    const bus = feed();
    const index = createKnownSecretIndex(vaultOf(live).source, bus);
    await index.current();
    live.set('b', Buffer.from('bravo-secret-0002'));
    bus.emit({ type: 'secret.added', id: 'b' });
    bus.emit({ type: 'secret.erased', id: 'b' });
    expect(await scanWith(await index.current(), Buffer.from('bravo-secret-0002'), [])).toBe(
      'bravo-secret-0002',
    );
    index.close();
  });

  it('hex forms stay out of the detector view', async () => {
    const live = new Map<string, Buffer>([['a', Buffer.from('alpha-secret-0001')]]);
    const index = createKnownSecretIndex(vaultOf(live).source, feed());
    const view = index.secretMatcher();
    await index.formsReady();
    // The detectors' forms carry no hex; PostgreSQL's ask adds it.
    expect(view.find(Buffer.from('alpha-secret-0001').toString('hex'), 'text')).toEqual([]);
    index.outputForms();
    await index.formsReady();
    const hex = Buffer.from('alpha-secret-0001').toString('hex');
    expect(
      index
        .outputForms()
        .matcher.find(hex, 'text')
        .map((m) => m.secretId),
    ).toEqual([`${HEX_PREFIX}la`]);
    expect(view.find(hex, 'text')).toEqual([]);
    expect(view.find('alpha-secret-0001', 'text').map((m) => m.secretId)).toEqual(['a']);
    index.close();
  });

  it('a secret too large for the detectors is never silently left out: the index is stale until it is erased', async () => {
    // The vault refuses such values (CC_ERR_SECRET_TOO_LARGE): every value it takes fits the matcher.
    expect(MAX_SECRET_BYTES).toBeLessThanOrEqual(KNOWN_SECRET_MAX_BYTES);
    const largest = Buffer.alloc(KNOWN_SECRET_MAX_BYTES, 'q');
    largest.write('largest-secret-start', 0);
    const live = new Map<string, Buffer>([
      ['a', Buffer.from('alpha-secret-0001')],
      ['max', largest],
    ]);
    const bus = feed();
    const errors: unknown[] = [];
    const index = createKnownSecretIndex(vaultOf(live).source, bus, {
      retryMs: 20,
      onError: (e) => errors.push(e),
    });
    const view = index.secretMatcher();
    await index.formsReady();
    expect(index.stale).toBe(false);
    // The largest value the vault takes is found by the detectors, whole.
    const text = `before ${largest.toString('latin1')} after`;
    expect(view.find(text, 'text').map((m) => [m.secretId, m.end - m.start])).toContainEqual([
      'max',
      KNOWN_SECRET_MAX_BYTES,
    ]);
    // One byte more (a row the vault's bound never saw), added by a change: stale, refused, reported.
    for (const [how, id] of [
      ['added', 'over1'],
      ['reloaded', 'over2'],
    ] as const) {
      live.set(id, Buffer.alloc(KNOWN_SECRET_MAX_BYTES + 1, 'z'));
      if (how === 'added') bus.emit({ type: 'secret.added', id });
      else bus.emit({ type: 'resync' });
      await expect(index.current()).rejects.toMatchObject({ code: 'CC_ERR_GATEWAY_INSPECTION_FAILED' });
      expect(index.stale).toBe(true);
      expect(() => index.patterns()).toThrow(
        expect.objectContaining({ code: 'CC_ERR_GATEWAY_INSPECTION_FAILED' }),
      );
      expect(errors.at(-1)).toMatchObject({
        code: 'CC_ERR_DETECT_KNOWN_SECRET_TOO_LARGE',
        details: { secretId: id },
      });
      // Still stale after retries, until the secret is erased.
      await new Promise((r) => setTimeout(r, 60));
      expect(index.stale).toBe(true);
      live.delete(id);
      bus.emit({ type: 'secret.erased', id });
      for (let i = 0; i < 100 && index.stale; i++) await new Promise((r) => setTimeout(r, 10));
      expect(index.stale).toBe(false);
      expect(view.find('alpha-secret-0001', 'text').map((m) => m.secretId)).toEqual(['a']);
    }
    index.close();
  });

  it("the shared index tells every caller's onError, not only the first's", async () => {
    const live = new Map<string, Buffer>([['a', Buffer.from('alpha-secret-0001')]]);
    const vault = vaultOf(live);
    const bus = feed();
    const first: unknown[] = [];
    const second: unknown[] = [];
    const source = vault.source;
    try {
      // The first caller (the log scrubber, say) gives no handler; the later ones do.
      const index = sharedKnownSecretIndex(source, bus);
      expect(sharedKnownSecretIndex(source, bus, { onError: (e) => first.push(e) })).toBe(index);
      sharedKnownSecretIndex(source, bus, {
        onError: () => {
          throw new Error('a failing handler');
        },
      });
      sharedKnownSecretIndex(source, bus, { onError: (e) => second.push(e) });
      await index.current();
      vault.state.broken = true;
      live.set('b', Buffer.from('bravo-secret-0002'));
      bus.emit({ type: 'secret.added', id: 'b' });
      await expect(index.current()).rejects.toMatchObject({ code: 'CC_ERR_GATEWAY_INSPECTION_FAILED' });
      expect(first.length).toBeGreaterThan(0);
      expect(second.length).toBe(first.length);
    } finally {
      closeSharedKnownSecretIndex(source);
    }
  });
});
