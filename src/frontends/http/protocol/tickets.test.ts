import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../../core/errors.js';
import { mintTicket } from '../../../core/ticket-format.js';
import { parseRouteTarget, scrubPath, upstreamPath } from './request-target.js';
import {
  bodyTickets,
  formTickets,
  headerTickets,
  jsonTickets,
  pathTickets,
  placementOfHeader,
  substituteForm,
  substituteHeader,
  substituteJson,
  substitutePath,
} from './tickets.js';

const TICKETS = [mintTicket(), mintTicket(), mintTicket()];
const secretFor = (t: string) => `s3cret-${TICKETS.indexOf(t)}-ünï "/\\ &=+%`;
const secretOf = (t: string) => Buffer.from(secretFor(t), 'utf8');
const latin1 = (s: string) => Buffer.from(s, 'utf8').toString('latin1');
const utf8 = (s: string) => Buffer.from(s, 'latin1').toString('utf8');

/** Text with tickets at arbitrary places. */
const withTickets = fc
  .array(fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom(...TICKETS)), { maxLength: 6 })
  .map((parts) => parts.join(''));
const replaced = (text: string) => TICKETS.reduce((acc, t) => acc.split(t).join(secretFor(t)), text);

describe('JSON bodies', () => {
  it('puts each secret where its ticket stood, in any string, leaving the rest intact', () => {
    const value = fc.letrec((tie) => ({
      node: fc.oneof(
        { depthSize: 'small' },
        withTickets,
        fc.integer(),
        fc.boolean(),
        fc.array(tie('node'), { maxLength: 4 }),
        fc.dictionary(withTickets, tie('node'), { maxKeys: 4 }),
      ),
    })).node;
    fc.assert(
      fc.property(value, fc.boolean(), (v, escapeAll) => {
        let text = JSON.stringify(v);
        // Some clients escape every non-ASCII character, or all of them: \u0063ct_… must still be found.
        if (escapeAll)
          text = text.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
        const expected = JSON.parse(JSON.stringify(v), (_k, x) => (typeof x === 'string' ? replaced(x) : x));
        const out = utf8(substituteJson(latin1(text), secretOf));
        const mapKeys = (x: unknown): unknown =>
          Array.isArray(x)
            ? x.map(mapKeys)
            : x !== null && typeof x === 'object'
              ? Object.fromEntries(Object.entries(x).map(([k, y]) => [replaced(k), mapKeys(y)]))
              : x;
        expect(JSON.parse(out)).toEqual(mapKeys(expected));
      }),
      { numRuns: 300 },
    );
  });

  it('finds \\u-escaped tickets and leaves literals without tickets byte-exact', () => {
    const t = TICKETS[0]!;
    const escaped = [...t].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('');
    const text = `{"a":"${escaped}","b":"x\\ny","n":1.0e+2}`;
    expect(jsonTickets(text)).toEqual([t]);
    expect(substituteJson(text, () => Buffer.from('v'))).toBe('{"a":"v","b":"x\\ny","n":1.0e+2}');
  });

  it('never throws on garbage, and finds tickets outside literals too', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), withTickets, (garbage, t) => {
        const text = latin1(`${garbage}${t}`);
        expect(() => bodyTickets('json', text)).not.toThrow();
        expect(() => substituteJson(text, secretOf)).not.toThrow();
      }),
    );
    expect(jsonTickets(`{"unterminated: ${TICKETS[1]}`)).toEqual([TICKETS[1]]);
  });
});

describe('form bodies and query strings', () => {
  it('round-trips through URLSearchParams with the secret in place of the ticket', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(withTickets, withTickets), { maxLength: 5 }), (pairs) => {
        const text = latin1(new URLSearchParams(pairs).toString());
        const out = utf8(substituteForm(text, secretOf, true));
        expect([...new URLSearchParams(out)]).toEqual(pairs.map(([k, v]) => [replaced(k), replaced(v)]));
        expect(formTickets(text, true).sort()).toEqual(
          pairs
            .flatMap(([k, v]) => [...(k + '\0' + v).matchAll(/cct_[0-9A-Za-z]{28}/g)].map((m) => m[0]))
            .sort(),
        );
      }),
    );
  });

  it('finds percent-encoded tickets', () => {
    const t = TICKETS[2]!;
    expect(formTickets(`a=${t.replace('_', '%5F')}`, false)).toEqual([t]);
  });
});

describe('headers', () => {
  it('exchanges tickets inside Basic credentials and refuses secrets that would break the header', () => {
    const t = TICKETS[0]!;
    const value = `Basic ${Buffer.from(`user:${t}`).toString('base64')}`;
    expect(headerTickets(value)).toEqual([t]);
    const out = substituteHeader(value, () => Buffer.from('pa:ss'));
    expect(Buffer.from(out.slice(6), 'base64').toString()).toBe('user:pa:ss');
    expect(() => substituteHeader(`Bearer ${t}`, () => Buffer.from('a\r\nX-Evil: 1'))).toThrow(
      expect.objectContaining({ code: 'CC_ERR_HTTP_INJECTION_UNSAFE' }),
    );
  });
});

describe('request targets', () => {
  it('routes /c/<connection>/<path>?<query> and joins it under the base path', () => {
    const target = parseRouteTarget('/c/github/repos/a%2Fb?x=1');
    expect(target).toEqual({ connection: 'github', path: '/repos/a%2Fb', query: 'x=1' });
    expect(upstreamPath('/api/v3/', target)).toBe('/api/v3/repos/a%2Fb?x=1');
    expect(upstreamPath('/', parseRouteTarget('/c/github'))).toBe('/');
  });

  it('gives only deliberate errors on any input', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 100 }),
          fc.string({ maxLength: 100 }).map((s) => `/c/x/${s}`),
        ),
        (raw) => {
          try {
            const target = parseRouteTarget(raw);
            expect(target.path.split('/')).not.toContain('..');
          } catch (error) {
            expect(error).toBeInstanceOf(CoatcheckError);
            expect(['CC_ERR_HTTP_BAD_REQUEST', 'CC_ERR_HTTP_UNSUPPORTED']).toContain(
              (error as CoatcheckError).code,
            );
          }
        },
      ),
    );
    expect(() => parseRouteTarget(`/c/x/${'a'.repeat(9000)}`)).toThrow(
      expect.objectContaining({ code: 'CC_ERR_HTTP_BAD_REQUEST' }),
    );
  });

  it('masks tickets and agent keys in recorded paths', () => {
    expect(scrubPath(`/tokens/${TICKETS[0]}/x`)).toBe('/tokens/cct_…/x');
  });
});

describe('URL paths and header placements', () => {
  it('finds tickets in path segments, percent-encoded or not, and puts each secret there encoded', () => {
    const [a, b] = [TICKETS[0]!, TICKETS[1]!];
    const path = `/bot${a}/send/%63${b.slice(1)}/plain`;
    expect(pathTickets(path)).toEqual([a, b]);
    const out = substitutePath(path, secretOf);
    expect(out.split('/').map((s) => decodeURIComponent(s))).toEqual([
      '',
      `bot${secretFor(a)}`,
      'send',
      secretFor(b),
      'plain',
    ]);
    expect(out).not.toContain('cct_');
    expect(pathTickets('/a/b%zz/c')).toEqual([]);
    expect(substitutePath('/a/b%zz/c', secretOf)).toBe('/a/b%zz/c');
  });

  it('counts only Authorization as a credential position', () => {
    expect(placementOfHeader('Authorization')).toBe('credential');
    expect(placementOfHeader('authorization')).toBe('credential');
    for (const name of ['X-Api-Key', 'Cookie', 'Proxy-Authorization-Extra', 'X-Authorization'])
      expect(placementOfHeader(name)).toBe('header');
  });
});
