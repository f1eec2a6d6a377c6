import { setFlagsFromString } from 'node:v8';
import { CoatcheckError } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import { type Cedar, cedar } from './cedar.js';
import type { LoadedPolicy, LoadedPolicySet } from './load-policies.js';
import { BUILTIN_POLICY, BUILTIN_POLICY_ID, CEDAR_SCHEMA } from './schema.js';

export type Effect = 'allow' | 'deny' | 'approval';

export interface Decision {
  readonly effect: Effect;
  /** Policies that decided (the satisfied permits, or the forbids that overrode them). */
  readonly policies: readonly string[];
  /** Groups whose members may approve (from `@approvers`), when effect is 'approval'. */
  readonly approvers: readonly string[];
  /** How many distinct approvers are needed (from `@quorum`, default 1). */
  readonly quorum: number;
  /** Column or field patterns to mask (from `@mask`). */
  readonly mask: readonly string[];
  /** Evaluation errors (each makes the policy that raised it not apply; never an allow). */
  readonly errors: readonly string[];
}

export type CedarValue = string | number | boolean | CedarValue[] | { [key: string]: CedarValue };

export interface PolicyRequest {
  readonly principal: Pick<Principal, 'kind' | 'name' | 'groups'> & {
    readonly type?: 'Agent' | 'Human' | 'Subtask';
  };
  readonly action: string;
  readonly resource: {
    readonly type: 'Connection' | 'Secret';
    readonly id: string;
    readonly attrs?: Record<string, CedarValue>;
  };
  /** Request facts; `hour` and `weekday` are filled in from the clock and time zone. */
  readonly context?: Record<string, CedarValue>;
  readonly now?: number;
}

// Node 20's V8 crashes the process (a fatal error in the deoptimizer) when TurboFan has
// inlined the JS-to-WASM call into Cedar and the frame is later deoptimized lazily.
// `npm run bench:policy` reproduced it within 50,000 distinct decisions. Turning the
// inlining off before any of this code is optimized avoids it; the cost is a few
// hundred nanoseconds a call.
setFlagsFromString('--no-turbo-inline-js-wasm-calls');

const WEEKDAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const CACHE_LIMIT = 10_000;

function principalType(p: PolicyRequest['principal']): 'Agent' | 'Human' | 'Subtask' {
  if (p.type !== undefined) return p.type;
  if (p.kind === 'subtask') return 'Subtask';
  return p.kind === 'agent' ? 'Agent' : 'Human';
}

const formatters = new Map<string, Intl.DateTimeFormat>();
let lastClock: { zone: string; minute: number; value: { hour: number; weekday: string } } | null = null;

/** Hour (0-23) and weekday (`mon`…) at `now` in `timeZone`. Formatters are costly to build: cached. */
export function clockContext(now: number, timeZone: string): { hour: number; weekday: string } {
  const minute = Math.floor(now / 60_000);
  if (lastClock !== null && lastClock.zone === timeZone && lastClock.minute === minute)
    return lastClock.value;
  let format = formatters.get(timeZone);
  if (format === undefined) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hour: 'numeric',
      hourCycle: 'h23',
      weekday: 'short',
    });
    formatters.set(timeZone, format);
  }
  const parts = format.formatToParts(now);
  const hour = Number(parts.find((p) => p.type === 'hour')?.value ?? 0);
  const weekday = (parts.find((p) => p.type === 'weekday')?.value ?? 'Sun').slice(0, 3).toLowerCase();
  const value = { hour: hour === 24 ? 0 : hour, weekday: WEEKDAYS.includes(weekday) ? weekday : 'sun' };
  lastClock = { zone: timeZone, minute, value };
  return value;
}

/**
 * Build the Cedar call with plain loops and keep it out of `decide`: V8 on Node 20 has
 * crashed (a deoptimizer fatal error) when array spreads and callbacks sat in the same
 * optimized frame as this WASM call. `npm run bench:policy` exercises the path.
 */
function evaluate(
  setId: string,
  type: 'Agent' | 'Human' | 'Subtask',
  request: PolicyRequest,
  context: Record<string, CedarValue>,
): Cedar.AuthorizationAnswer {
  const groups = request.principal.groups;
  const parents: { type: string; id: string }[] = [];
  const entities: Cedar.EntityJson[] = [];
  for (let i = 0; i < groups.length; i++) {
    const group = groups[i]!;
    parents.push({ type: 'Group', id: group });
    entities.push({ uid: { type: 'Group', id: group }, attrs: {}, parents: [] });
  }
  entities.push({
    uid: { type, id: request.principal.name },
    attrs: { name: request.principal.name },
    parents,
  });
  const resourceAttrs =
    request.resource.attrs ??
    (request.resource.type === 'Connection' ? { type: 'unknown' } : { kind: 'generic' });
  entities.push({
    uid: { type: request.resource.type, id: request.resource.id },
    attrs: resourceAttrs as Record<string, Cedar.CedarValueJson>,
    parents: [],
  });
  return cedar().statefulIsAuthorized({
    principal: { type, id: request.principal.name },
    action: { type: 'Action', id: request.action },
    resource: { type: request.resource.type, id: request.resource.id },
    context: context as Record<string, Cedar.CedarValueJson>,
    preparsedPolicySetId: setId,
    entities,
  });
}

let engines = 0;

/** The decision an engine makes when it is built (see the constructor): no one's, of no resource. */
const WARM_UP: PolicyRequest = {
  principal: { kind: 'agent', name: 'coatcheck-warm-up', groups: ['coatcheck-warm-up'] },
  action: 'http:GET',
  resource: { type: 'Connection', id: 'coatcheck-warm-up', attrs: { type: 'http' } },
};

/**
 * The context attributes some policy of the set can read, or null when that cannot be told
 * from the text (the whole `context` record used as a value, an attribute named by a string
 * holding an escape, or the word anywhere else: a comment, a string). Cedar has no computed
 * attribute names, and decisions are made without a schema, so an attribute no policy
 * names cannot change a decision: the decision cache leaves it out of its key (a SQL
 * statement's text, or a path, when no policy reads them).
 */
export function contextAttributesRead(texts: readonly string[]): ReadonlySet<string> | null {
  const read = new Set<string>();
  for (const text of texts) {
    const access =
      /\bcontext\b\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*"([^"\\]*)"\s*\]|has\s+(?:([A-Za-z_][A-Za-z0-9_]*)|"([^"\\]*)"))?/g;
    for (const m of text.matchAll(access)) {
      const name = m[1] ?? m[2] ?? m[3] ?? m[4];
      if (name === undefined) return null;
      read.add(name);
    }
  }
  return read;
}

/**
 * Decisions from one parsed policy set. Pure apart from Cedar's own preparse cache:
 * the set is parsed once, and decisions whose inputs repeat are served from a cache that
 * is dropped when the set is replaced.
 */
export class PolicyEngine {
  readonly source: 'builtin' | 'configured';
  readonly policies: readonly LoadedPolicy[];
  readonly #byId: Map<string, LoadedPolicy>;
  readonly #setId: string;
  readonly #timeZone: string;
  readonly #cache = new Map<string, Decision>();
  /** Context attributes in the cache key (null: all of them). */
  readonly #keyed: ReadonlySet<string> | null;

  constructor(set: LoadedPolicySet | null, options: { timeZone?: string } = {}) {
    this.source = set === null ? 'builtin' : 'configured';
    this.policies =
      set === null
        ? [
            {
              id: BUILTIN_POLICY_ID,
              text: BUILTIN_POLICY,
              file: '(built in)',
              line: 1,
              effect: 'permit',
              annotations: {},
            },
          ]
        : set.policies;
    this.#byId = new Map(this.policies.map((p) => [p.id, p]));
    this.#keyed = contextAttributesRead(this.policies.map((p) => p.text));
    this.#timeZone = options.timeZone ?? 'UTC';
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: this.#timeZone });
    } catch {
      throw new CoatcheckError(
        'CC_ERR_CONFIG_INVALID',
        `policy.timeZone: ${this.#timeZone} is not a time zone`,
        {
          details: { field: 'policy.timeZone' },
        },
      );
    }
    this.#setId = `coatcheck-${++engines}`;
    const parsed = cedar().preparsePolicySet(this.#setId, {
      staticPolicies: Object.fromEntries(this.policies.map((p) => [p.id, p.text])),
    });
    if (parsed.type === 'failure') {
      throw new CoatcheckError(
        'CC_ERR_POLICY_INVALID',
        `policy set: ${parsed.errors[0]?.message ?? 'does not parse'}`,
      );
    }
    const schema = cedar().preparseSchema('coatcheck', CEDAR_SCHEMA);
    if (schema.type === 'failure')
      throw new CoatcheckError('CC_ERR_INTERNAL', 'the built-in Cedar schema does not parse');
    // The first decision in a process compiles the WebAssembly it runs (40-120 ms measured):
    // taken here, where the engine is built (at start, at a reload), not by the first request
    // after a start. A later engine's first decision costs a few milliseconds. Its answer
    // is not kept: the decision cache starts empty.
    evaluate(this.#setId, 'Agent', WARM_UP, clockContext(Date.now(), this.#timeZone));
  }

  get timeZone(): string {
    return this.#timeZone;
  }

  decide(request: PolicyRequest): Decision {
    const context: Record<string, CedarValue> = {
      ...clockContext(request.now ?? Date.now(), this.#timeZone),
      ...request.context,
    };
    const type = principalType(request.principal);
    // Only what the policies can read is in the key (see contextAttributesRead).
    const keyed = this.#keyed;
    let read: Record<string, CedarValue> = context;
    if (keyed !== null) {
      read = {};
      for (const name of Object.keys(context)) if (keyed.has(name)) read[name] = context[name]!;
    }
    const key = JSON.stringify([
      type,
      request.principal.name,
      request.principal.groups,
      request.action,
      request.resource,
      read,
    ]);
    const cached = this.#cache.get(key);
    if (cached !== undefined) return cached;

    const answer = evaluate(this.#setId, type, request, context);
    let decision: Decision;
    if (answer.type === 'failure') {
      // Fail closed: a request Cedar cannot evaluate is denied.
      decision = {
        effect: 'deny',
        policies: [],
        approvers: [],
        quorum: 1,
        mask: [],
        errors: answer.errors.map((e) => e.message),
      };
    } else {
      const reasons = answer.response.diagnostics.reason;
      const errors = answer.response.diagnostics.errors.map((e) => `${e.policyId}: ${e.error.message}`);
      if (answer.response.decision === 'deny') {
        decision = { effect: 'deny', policies: reasons, approvers: [], quorum: 1, mask: [], errors };
      } else {
        const permits = reasons
          .map((id) => this.#byId.get(id))
          .filter((p): p is LoadedPolicy => p !== undefined);
        // Conservative: if any satisfied permit asks for approval, approval is required.
        const approval = permits.filter((p) => p.annotations.approval === 'required');
        const split = (text: string | undefined) =>
          (text ?? '')
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean);
        decision = {
          effect: approval.length > 0 ? 'approval' : 'allow',
          policies: reasons,
          approvers: [...new Set(approval.flatMap((p) => split(p.annotations.approvers)))],
          quorum: Math.max(1, ...approval.map((p) => Number(p.annotations.quorum ?? 1))),
          mask: [...new Set(permits.flatMap((p) => split(p.annotations.mask)))],
          errors,
        };
      }
    }
    if (this.#cache.size >= CACHE_LIMIT) this.#cache.clear();
    this.#cache.set(key, decision);
    return decision;
  }

  /** Drop cached decisions (on revocation or any change that could alter an input). */
  invalidate(): void {
    this.#cache.clear();
  }
}
