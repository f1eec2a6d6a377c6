import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeView, LONGEST_ESCAPE } from '../detect/canonical.js';
import {
  buildPatterns,
  type KnownSecret,
  MAX_DECODE_LEVELS,
  MIN_SCANNED_SECRET_BYTES,
  PatternScan,
} from './inspector.js';

/** Tickets are written with characters the secrets below never use. */
const ticketOf = (id: string) => `<${id}>`;

function scannerFor(secrets: readonly KnownSecret[]) {
  const set = buildPatterns(secrets);
  return { set, scan: new PatternScan(set, { reissue: async (id) => ticketOf(id) }) };
}

async function run(secrets: readonly KnownSecret[], input: Buffer, cuts: number[] = []): Promise<string> {
  const { scan } = scannerFor(secrets);
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

/**
 * The reference: every occurrence of every pattern found by brute force, overlapping
 * occurrences merged, each merged span replaced. Only the raw (unescaped) forms are used,
 * so the texts below contain no escape characters.
 */
function reference(secrets: readonly KnownSecret[], input: Buffer): string {
  const { patterns } = buildPatterns(secrets);
  const matches: { start: number; end: number; p: number }[] = [];
  patterns.forEach((pattern, p) => {
    for (let i = 0; i + pattern.bytes.length <= input.length; i++) {
      if (input.subarray(i, i + pattern.bytes.length).equals(pattern.bytes)) {
        matches.push({ start: i, end: i + pattern.bytes.length, p });
      }
    }
  });
  matches.sort((a, b) => a.start - b.start || b.end - a.end);
  const spans: { start: number; end: number; ms: typeof matches }[] = [];
  for (const m of matches) {
    const last = spans.at(-1);
    if (last !== undefined && m.start < last.end) {
      last.end = Math.max(last.end, m.end);
      last.ms.push(m);
    } else spans.push({ start: m.start, end: m.end, ms: [m] });
  }
  let out = '';
  let at = 0;
  for (const span of spans) {
    out += input.subarray(at, span.start).toString('latin1');
    if (span.ms.length === 1) {
      const pattern = patterns[span.ms[0]!.p]!;
      out += pattern.replace(ticketOf(pattern.secretId)).toString('latin1');
    } else {
      const ids: string[] = [];
      for (const m of span.ms) if (!ids.includes(patterns[m.p]!.secretId)) ids.push(patterns[m.p]!.secretId);
      out += ids.map(ticketOf).join('');
    }
    at = span.end;
  }
  return out + input.subarray(at).toString('latin1');
}

/** Secrets over a tiny alphabet, so fragments of them overlap, nest and abut all the time. */
const secretArb = fc
  .array(fc.constantFrom('a', 'b', 'c', '_'), { minLength: MIN_SCANNED_SECRET_BYTES, maxLength: 12 })
  .map((chars) => chars.join(''));

const scenario = fc.uniqueArray(secretArb, { minLength: 1, maxLength: 4 }).chain((values) => {
  const secrets = values.map((v, i) => ({ id: `s${i}`, value: Buffer.from(v) }));
  const fragment = fc.oneof(
    fc.constantFrom(...values),
    fc
      .tuple(fc.constantFrom(...values), fc.nat(), fc.nat())
      .map(([v, a, b]) => v.slice(Math.min(a, b) % v.length, Math.max(a, b) % (v.length + 1))),
    fc.constantFrom('a', 'b', 'c', '_', ' ', '\n'),
  );
  return fc.tuple(
    fc.constant(secrets),
    fc.array(fragment, { maxLength: 12 }).map((parts) => Buffer.from(parts.join(''))),
    fc.array(fc.nat(), { maxLength: 6 }),
  );
});

describe('PatternScan against hostile texts', () => {
  it('leaks nothing when one registered value ends where the target begins (the overlap attack)', async () => {
    const target = 'Xtarget-secret-value-0123456789';
    const chosen = `ghp_${'A'.repeat(35)}X`;
    const secrets = [
      { id: 'target', value: Buffer.from(target) },
      { id: 'chosen', value: Buffer.from(chosen) },
    ];
    const body = Buffer.from(`{"out":"${chosen}${target.slice(1)}"}`);
    const out = await run(secrets, body);
    expect(out).toBe('{"out":"<chosen><target>"}');
    expect(out).not.toContain(target.slice(1));
  });

  it('replaces the union of overlapping, nested and chained matches (variants)', async () => {
    const secrets = [
      { id: 'a', value: Buffer.from('abcdefgh') },
      { id: 'b', value: Buffer.from('fghijklm') },
      { id: 'c', value: Buffer.from('lmnopqrs') },
      { id: 'inner', value: Buffer.from('cdefgh') },
    ];
    // A chain of three, each overlapping the next.
    expect(await run(secrets, Buffer.from('[abcdefghijklmnopqrs]'))).toBe('[<a><inner><b><c>]');
    // One secret nested inside another.
    expect(await run(secrets, Buffer.from('[abcdefgh]'))).toBe('[<a><inner>]');
    // Adjacent, not overlapping: two spans.
    expect(await run(secrets, Buffer.from('[abcdefghlmnopqrs]'))).toBe('[<a><inner><c>]');
    // The same secret overlapping itself.
    const self = [{ id: 'x', value: Buffer.from('aXaXaX') }];
    expect(await run(self, Buffer.from('-aXaXaXaX-'))).toBe('-<x>-');
  });

  it('matches the brute-force reference for any secrets and any text made of their fragments, split anywhere', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async ([secrets, input, rawCuts]) => {
        const cuts = rawCuts.map((c) => (input.length === 0 ? 0 : c % input.length));
        const out = await run(secrets, input, cuts);
        expect(out).toBe(reference(secrets, input));
        // And what comes out holds no secret.
        for (const s of secrets) expect(out).not.toContain(s.value.toString());
      }),
      { numRuns: 400 },
    );
  });
});

/** One character written the way some encoder writes it. */
const escapes: ((ch: string) => string | null)[] = [
  (ch) => ch,
  (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`,
  (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0').toUpperCase()}`,
  (ch) => `%${ch.charCodeAt(0).toString(16).padStart(2, '0')}`,
  (ch) => `%${ch.charCodeAt(0).toString(16).padStart(2, '0').toUpperCase()}`,
  (ch) => `&#${ch.charCodeAt(0)};`,
  (ch) => `&#x${ch.charCodeAt(0).toString(16)};`,
  (ch) => `&#X${ch.charCodeAt(0).toString(16).toUpperCase()};`,
  (ch) => ({ '&': '&amp;', "'": '&apos;', '<': '&lt;', '+': '&plus;', '/': '&sol;' })[ch] ?? null,
  (ch) => ({ '"': '\\"', '/': '\\/', '\\': '\\\\' })[ch] ?? null,
  // Two levels: a JSON escape of a percent escape.
  (ch) => `\\u0025${ch.charCodeAt(0).toString(16).padStart(2, '0')}`,
];

/**
 * A stray escape character before the secret makes decoding ambiguous; the scan forks at
 * every escape to cover that, one decoding level at a time. Combined with a secret whose
 * characters are escaped at different nesting depths (no real encoder does that) it is
 * not covered (documented in docs/frontends/http.md).
 */
const nestedOk = (prefix: string) => !['%', '&#', '\\u', '&'].includes(prefix);

const SECRETS = ['Tok3n&<x>+y/z\'!()*~"q', 'plain-secret-0123456789', 'caf\u00e9-\u20ac-secret'];

function fullyDecoded(text: string): string {
  let view = text;
  for (let i = 0; i < 4; i++) {
    const d = decodeView(view, 'bytes');
    if (!d.changed) break;
    view = d.view;
  }
  return view;
}

describe('PatternScan over encoded forms', () => {
  const secrets = SECRETS.map((v, i) => ({ id: `e${i}`, value: Buffer.from(v) }));

  it('finds a secret however each of its characters is escaped, split anywhere', async () => {
    const encoded = fc
      .tuple(
        fc.constantFrom(...secrets),
        fc.array(fc.nat({ max: escapes.length - 1 }), { minLength: 32, maxLength: 32 }),
        fc.constantFrom('', 'x', '{"k":"', 'a=', '\\\\', '%25', '&amp;', '%', '&#', '\\u', '&'),
        fc.array(fc.nat(), { maxLength: 5 }),
      )
      .map(([secret, choice, prefix, cuts]) => {
        const bytes = [...secret.value];
        // Non-ASCII bytes are written as percent escapes or raw (UTF-8), ASCII ones any way.
        const text = secret.value.toString('utf8');
        let body = '';
        for (const [k, ch] of [...text].entries()) {
          const code = ch.codePointAt(0)!;
          const form =
            code < 0x80
              ? (escapes[nestedOk(prefix) ? choice[k % 32]! : choice[k % 32]! % (escapes.length - 1)]!(ch) ??
                ch)
              : choice[k % 32]! % 2 === 0
                ? encodeURIComponent(ch)
                : `\\u${code.toString(16).padStart(4, '0')}`;
          body += form;
        }
        return { secret, body: Buffer.from(`${prefix}${body}"}`, 'utf8'), cuts, n: bytes.length };
      });
    await fc.assert(
      fc.asyncProperty(encoded, async ({ secret, body, cuts }) => {
        const out = await run(
          secrets,
          body,
          cuts.map((c) => c % body.length),
        );
        expect(out).toContain(ticketOf(secret.id));
        expect(fullyDecoded(Buffer.from(out, 'latin1').toString('latin1'))).not.toContain(
          secret.value.toString('latin1'),
        );
      }),
      { numRuns: 400 },
    );
  });

  it('gives the same output at every split offset of a streamed body', async () => {
    const body = Buffer.from(
      `data: {"t":"Tok3n\\u0026\\u003cx\\u003e\\u002by\\/z\\u0027!()*~\\"q"}\n\ndata: a=Tok3n%26%3Cx%3e%2By%2Fz%27%21%28%29%2a%7E%22q\n\n<p>Tok3n&amp;&#60;x&#x3E;&#43;y&sol;z&#39;&excl;()*~&quot;q</p>`,
    );
    const whole = await run(secrets, body);
    expect(whole.split(ticketOf('e0')).length - 1).toBe(3);
    for (let cut = 1; cut < body.length; cut++) {
      expect(await run(secrets, body, [cut])).toBe(whole);
    }
  });

  it('does not hold back a complete event that merely ends with text (streams keep flowing)', async () => {
    const { scan } = scannerFor(secrets);
    expect((await scan.push(Buffer.from('data: 100% done &amp; ok\n\n'))).toString()).toBe(
      'data: 100% done &amp; ok\n\n',
    );
    // An escape cut by the chunk border is held until it completes.
    expect((await scan.push(Buffer.from('data: plain-secret-01234%3'))).toString()).toBe('data: ');
    expect((await scan.push(Buffer.from('56789\n\n'))).toString()).toBe(`${ticketOf('e1')}\n\n`);
  });

  it('tells the postgres path when a row may hold a secret, escaped or not', () => {
    const { set } = scannerFor(secrets);
    expect(set.mayContain(Buffer.from('x plain-secret-0123456789'))).toBe(true);
    expect(set.mayContain(Buffer.from('x plain%2Dsecret-0123456789'))).toBe(true);
    expect(set.mayContain(Buffer.from('x plain-secret-012345678'))).toBe(false);
  });
});

describe('PatternScan work bounds', () => {
  it('stays linear on text built to cut escapes at every level (%25%25%25…)', async () => {
    // Re-analysing after every cut would be quadratic here: minutes, past the test timeout.
    const { scan } = scannerFor([{ id: 'w', value: Buffer.from('plain-secret-0123456789') }]);
    const chunk = Buffer.from('%25'.repeat((64 * 1024) / 3));
    const out: Buffer[] = [];
    for (let i = 0; i < 4; i++) out.push(await scan.push(chunk));
    out.push(await scan.end());
    expect(Buffer.concat(out).length).toBe(chunk.length * 4);
  });
});

describe('PatternScan decodes only around escapes', () => {
  // Decoded views are built only for stretches around each escape (binary output has an
  // escape character every ~85 bytes but a decodable escape only every few KB). A set
  // holding one pattern longer than the whole body widens every stretch to all of it: the
  // same scan then decodes everything, which is the reference here.
  const secrets = SECRETS.map((v, i) => ({ id: `e${i}`, value: Buffer.from(v) }));
  const widening = { id: 'wide', value: Buffer.from('W'.repeat(48 * 1024)) };

  const encodedSecret = fc
    // Most characters as they are, a few escaped: a match then reaches far from its escapes.
    .tuple(
      fc.constantFrom(...SECRETS),
      fc.array(fc.nat({ max: 4 * escapes.length }), { minLength: 32, maxLength: 32 }),
    )
    .map(([value, choice]) =>
      [...value]
        .map((ch, k) => {
          const form = escapes[choice[k % 32]!];
          if (ch.codePointAt(0)! >= 0x80) return form === undefined ? ch : encodeURIComponent(ch);
          return form === undefined ? ch : (form(ch) ?? ch);
        })
        .join(''),
    );
  const part = fc.oneof(
    {
      weight: 4,
      arbitrary: fc.uint8Array({ maxLength: 2500 }).map((b) => Buffer.from(b).toString('latin1')),
    },
    { weight: 2, arbitrary: encodedSecret },
    { weight: 1, arbitrary: fc.constantFrom(...SECRETS) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        '%',
        '\\',
        '&',
        '%2',
        '&#',
        '\\u00',
        '%41',
        '\\n',
        '&amp;',
        '%25',
        '\\\\',
        '&#x',
        '&#99999999',
      ),
    },
  );
  const body = fc
    .tuple(fc.array(part, { maxLength: 14 }), fc.array(fc.nat(), { maxLength: 6 }))
    .map(([parts, cuts]) => {
      const input = Buffer.from(parts.join(''), 'latin1');
      return { input, cuts: cuts.map((c) => (input.length === 0 ? 0 : c % input.length)) };
    });

  it('gives what decoding the whole body gives, for binary bodies with sparse escapes, split anywhere', async () => {
    await fc.assert(
      fc.asyncProperty(body, async ({ input, cuts }) => {
        const out = await run(secrets, input, cuts);
        expect(out).toBe(await run([...secrets, widening], input, cuts));
        for (const s of SECRETS) expect(out).not.toContain(Buffer.from(s).toString('latin1'));
      }),
      { numRuns: 300 },
    );
  });

  it('reads an escape at a stretch end as the whole body does (&#99999999 is no escape; cut to &#9999 it would be)', async () => {
    const pencil = [{ id: 'p', value: Buffer.from('abcdefgh\u270f', 'utf8') }];
    const margin = buildPatterns(pencil).maxLength + LONGEST_ESCAPE * (MAX_DECODE_LEVELS + 1);
    for (let shift = -16; shift <= 16; shift++) {
      // A decodable escape opens a stretch; the numeric reference sits across where its margin ends.
      const input = Buffer.from(`%41${'.'.repeat(margin + shift)}abcdefgh&#99999999 tail`, 'latin1');
      expect(await run(pencil, input)).toBe(input.toString('latin1'));
    }
    expect(await run(pencil, Buffer.from('abcdefgh&#9999; tail'))).toBe(`${ticketOf('p')} tail`);
  });

  it('finds an escaped secret far from the start of a large binary chunk, and one cut by the chunk border', async () => {
    const filler = (n: number, seed: number) =>
      Buffer.from(Array.from({ length: n }, (_, i) => (i * 131 + seed * 17 + ((i * i) >> 3)) & 0xff));
    const escaped = 'plain%2Dsecret\\u002d0123456789';
    const input = Buffer.concat([
      filler(40_000, 1),
      Buffer.from(escaped),
      filler(30_000, 2),
      Buffer.from(escaped),
    ]);
    for (const cuts of [[], [40_010], [input.length - 5], [17, 40_000 + escaped.length, 70_020]]) {
      const out = await run(secrets, input, cuts);
      expect(out.split(ticketOf('e1')).length - 1).toBe(2);
      expect(out.length).toBe(input.length - 2 * escaped.length + 2 * ticketOf('e1').length);
    }
  });
});
