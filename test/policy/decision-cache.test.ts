import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cedar } from '../../src/policy/cedar.js';
import type { LoadedPolicy } from '../../src/policy/load-policies.js';
import { contextAttributesRead, PolicyEngine } from '../../src/policy/policy-engine.js';

// The decision cache keys on the context attributes the policies can read (issue 16): a
// path or a statement no policy names is left out of the key, so requests that differ only
// there share a decision. Exactly equivalent or wrong: checked against an engine that never
// serves from its cache (a new one per request).

const policy = (id: string, text: string): LoadedPolicy => ({
  id,
  text,
  file: 'test.cedar',
  line: 1,
  effect: text.startsWith('forbid') ? 'forbid' : 'permit',
  annotations: {},
});

const set = (texts: readonly string[]) => ({
  policies: texts.map((t, i) => policy(`p${i}`, t)),
  files: ['test.cedar'],
});

describe('contextAttributesRead', () => {
  it('names the attributes read by dot, by string and by has', () => {
    expect(
      contextAttributesRead([
        'permit(principal, action, resource) when { context.path like "/a/*" };',
        'forbid(principal, action, resource) when { context has statement && context["method"] == "DELETE" };',
        'permit(principal, action, resource) when { context has "source_ip" };',
      ]),
    ).toEqual(new Set(['path', 'statement', 'method', 'source_ip']));
    expect(contextAttributesRead(['permit(principal, action, resource);'])).toEqual(new Set());
  });

  it('keeps every attribute when the policies could read one it cannot name', () => {
    for (const text of [
      // The whole record compared: depends on every attribute.
      'permit(principal, action, resource) when { context == {"method": "GET"} };',
      // An escape spells an attribute name without writing it.
      'permit(principal, action, resource) when { context["pa\\u{74}h"] == "/x" };',
      'permit(principal, action, resource) when { context has "pa\\u{74}h" };',
      // The word in a comment or a string: kept to be safe.
      '// reads the context\npermit(principal, action, resource);',
      'permit(principal, action, resource) when { principal.name == "context" };',
    ]) {
      expect(contextAttributesRead([text])).toBeNull();
    }
  });
});

const paths = ['/a/1', '/a/2', '/b/1', '/admin', ''];
const statements = ['SELECT 1', 'DROP TABLE t', ''];
const methods = ['GET', 'DELETE'];

/** Small policies over method, path and statement (some read none of them). */
const policyArb = fc.oneof(
  fc.constant('permit(principal, action, resource);'),
  fc
    .constantFrom(...paths.filter(Boolean))
    .map((p) => `permit(principal, action, resource) when { context.path == "${p}" };`),
  fc.constant(
    'forbid(principal, action, resource) when { context has path && context.path like "/admin*" };',
  ),
  fc.constant(
    'forbid(principal, action, resource) when { context has statement && context.statement like "*DROP*" };',
  ),
  fc
    .constantFrom(...methods)
    .map((m) => `permit(principal, action, resource) when { context["method"] == "${m}" };`),
  fc.constant('permit(principal, action, resource) when { context.hour >= 0 };'),
  fc.constant('@approval("required")\npermit(principal in Group::"ops", action, resource);'),
);

const requestArb = fc.record({
  method: fc.constantFrom(...methods),
  path: fc.constantFrom(...paths),
  statement: fc.constantFrom(...statements),
  ops: fc.boolean(),
});

describe('decision cache keyed on what the policies read', () => {
  it('decides exactly as an engine that never serves from its cache', () => {
    fc.assert(
      fc.property(
        fc.array(policyArb, { minLength: 1, maxLength: 4 }),
        fc.array(requestArb, { minLength: 2, maxLength: 8 }),
        (texts, requests) => {
          const cached = new PolicyEngine(set(texts));
          for (const r of requests) {
            const request = {
              principal: { kind: 'agent' as const, name: 'bot', groups: r.ops ? ['ops'] : [] },
              action: 'http:GET',
              resource: { type: 'Connection' as const, id: 'api' },
              now: Date.parse('2026-11-23T10:30:00Z'),
              context: Object.fromEntries(
                Object.entries({ method: r.method, path: r.path, statement: r.statement }).filter(
                  ([, v]) => v !== '',
                ),
              ),
            };
            // Cedar lists the satisfied policies in no set order.
            const norm = (d: ReturnType<PolicyEngine['decide']>) => ({
              ...d,
              policies: [...d.policies].sort(),
              errors: [...d.errors].sort(),
            });
            expect(norm(cached.decide(request))).toEqual(norm(new PolicyEngine(set(texts)).decide(request)));
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('the warm-up decision', () => {
  // The first decision in a process compiles Cedar's WebAssembly paths (tens of
  // milliseconds): an engine makes one when it is built, so the first request after a start
  // or a reload does not wait for it. It is no one's decision: nothing of it is kept.
  it('is made when an engine is built, and leaves the decision cache empty', () => {
    const calls: string[] = [];
    const module = cedar();
    const real = module.statefulIsAuthorized;
    module.statefulIsAuthorized = (call) => {
      calls.push((call.principal as { id: string }).id);
      return real(call);
    };
    try {
      const engine = new PolicyEngine(
        set([
          'permit(principal, action, resource);',
          'forbid(principal, action, resource) when { principal.name == "ann" };',
        ]),
      );
      expect(calls).toEqual(['coatcheck-warm-up']);
      const request = {
        principal: { kind: 'agent' as const, name: 'coatcheck-warm-up', groups: ['coatcheck-warm-up'] },
        action: 'http:GET',
        resource: { type: 'Connection' as const, id: 'coatcheck-warm-up', attrs: { type: 'http' } },
      };
      // The same request decided for real is evaluated, not answered from a kept warm-up.
      expect(engine.decide(request).effect).toBe('allow');
      expect(calls).toEqual(['coatcheck-warm-up', 'coatcheck-warm-up']);
      expect(engine.decide({ ...request, principal: { ...request.principal, name: 'ann' } }).effect).toBe(
        'deny',
      );
    } finally {
      module.statefulIsAuthorized = real;
    }
  });
});
