/**
 * Secrets in content a front-end hands to a third party (a prompt for a model provider,
 * a tool result for an MCP client): every detector finding and every known vault secret
 * is replaced by a ticket bound to the caller. Shared by the LLM guard and the MCP
 * gateway. Fails closed: any error while scanning or tokenizing is thrown, and the
 * caller refuses the operation rather than sending the content unscanned.
 */
import { CoatcheckError } from '../core/errors.js';
import { createDetector, type Detector } from '../detect/detector.js';
import { createKnownSecretMatcher } from '../detect/known-secrets.js';
import { tokenizeText } from '../detect/scrub.js';
import type { Finding } from '../detect/types.js';
import type { Vault } from '../vault/vault.js';
import type { KnownSecretIndex } from './known-secret-index.js';

/** The vault calls a tokenizer needs (a seam for tests). */
export type TokenizerVault = Pick<Vault, 'knownSecrets' | 'tokenizeFound' | 'reissueForResponse'>;

export interface FoundSecretsRequest {
  /** Who the tickets are bound to (`agent:…`). */
  readonly principal: string;
  /** Audit `source` of secrets registered from this content (`llm`, `mcp`). */
  readonly source: string;
  /** Audit actor (`gateway:llm`). */
  readonly actor: string;
  /**
   * Destinations for tickets that stand for known vault secrets (empty or absent: the
   * secret's own). Tickets for newly found values get none: they are placeholders that
   * no exchange releases until an operator widens the secret.
   */
  readonly knownDestinations?: readonly string[];
  /**
   * Ids of the tickets exchanged for the call whose answer this is: each ticket minted here
   * is a child of the narrowest of them (never wider, revoked with it). None: the ticket is
   * bound to the caller with a bounded lifetime.
   */
  readonly parents?: Iterable<string>;
  /** Extra audit context (session id). */
  readonly context?: Record<string, unknown>;
  /** Called once per ticket minted (the session tracks ticket ids). */
  readonly onTicket?: (ticketId: string, secretId: string) => void;
}

export interface FoundSecretsScan {
  /** `text` with every secret replaced by a ticket (one ticket per distinct value per scan). */
  text(text: string): Promise<string>;
  /** Findings in `bytes` (read as latin1): a decoded attachment, which cannot be rewritten. */
  findIn(bytes: Buffer): Finding[];
  /** How many values were replaced. */
  readonly replaced: number;
}

export interface FoundSecrets {
  begin(request: FoundSecretsRequest): Promise<FoundSecretsScan>;
}

const KIND_RE = /^[a-z0-9-]{1,48}$/;

/**
 * With `index` (the gateways): one detector over the shared known-secret index, updated
 * secret by secret as the vault changes (ADR 0021); each scan waits until every change
 * heard before it is applied, and is refused while the index is stale. Without (tests):
 * one detector per list of known secrets, rebuilt when the vault's list changes.
 */
export function createFoundSecrets(vault: TokenizerVault, index?: KnownSecretIndex): FoundSecrets {
  let cachedFor: unknown = null;
  let detector: Detector | null = null;
  const detectorFor = async (): Promise<Detector> => {
    if (index !== undefined) {
      detector ??= createDetector({ knownSecrets: index.secretMatcher() });
      await index.current();
      await index.formsReady();
      return detector;
    }
    const known = await vault.knownSecrets();
    if (known !== cachedFor || detector === null) {
      const matcher = createKnownSecretMatcher();
      for (const secret of known) {
        try {
          matcher.add(secret.id, secret.value.reveal());
        } catch (error) {
          // Under 8 bytes: cannot be matched without false positives (the rules still apply).
          // Anything else (a value too large for the matcher) fails the inspection: never left out silently.
          if (!(error instanceof CoatcheckError && error.code === 'CC_ERR_DETECT_KNOWN_SECRET_TOO_SHORT'))
            throw error;
        }
      }
      detector = createDetector({ knownSecrets: matcher });
      cachedFor = known;
    }
    return detector;
  };

  return {
    async begin(request) {
      const active = await detectorFor();
      const tickets = new Map<string, Promise<string>>();
      let replaced = 0;
      const mint = async (finding: Finding, value: string): Promise<string> => {
        if (finding.secretId !== undefined) {
          const issued = await vault.reissueForResponse(
            finding.secretId,
            {
              principal: request.principal,
              ...(request.knownDestinations === undefined ? {} : { destinations: request.knownDestinations }),
              ...(request.parents === undefined ? {} : { parents: request.parents }),
              context: { source: request.source, ...request.context },
            },
            request.actor,
          );
          request.onTicket?.(issued.view.id, issued.view.secretId);
          return issued.ticket;
        }
        const issued = await vault.tokenizeFound(
          Buffer.from(value, 'utf8'),
          {
            principal: request.principal,
            destinations: [],
            ...(request.parents === undefined ? {} : { parents: request.parents }),
            kind: KIND_RE.test(finding.ruleId) ? finding.ruleId : 'found',
            source: request.source,
          },
          request.actor,
        );
        request.onTicket?.(issued.view.id, issued.view.secretId);
        // The value is a vault secret now: the shared index learns it while this content is
        // still being scanned, and a later occurrence found as that known secret must get
        // the same ticket, as within one scan before.
        if (!tickets.has(issued.view.secretId))
          tickets.set(issued.view.secretId, Promise.resolve(issued.ticket));
        return issued.ticket;
      };
      return {
        get replaced() {
          return replaced;
        },
        async text(text) {
          if (text.length < 8) return text;
          const out = await tokenizeText(
            text,
            (finding, value) => {
              replaced++;
              const key = finding.secretId ?? `v:${value}`;
              let ticket = tickets.get(key);
              if (ticket === undefined) {
                ticket = mint(finding, value);
                tickets.set(key, ticket);
              }
              return ticket;
            },
            { detector: active },
          );
          return out.text;
        },
        findIn(bytes) {
          return active.scan(bytes);
        },
      };
    },
  };
}

/** Most levels of nesting walked in a JSON document; deeper is refused. */
export const MAX_JSON_DEPTH = 64;

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Where a string sits: its key and the object holding it (to recognise attachments). */
export interface StringSite {
  readonly key: string | number | null;
  readonly parent: JsonValue[] | { [key: string]: JsonValue } | null;
  /** Keys from the root (`messages.0.content.1.image_url.url`). */
  readonly path: readonly (string | number)[];
  /** The string is an object key (`key` is then that key too). */
  readonly isKey?: boolean;
}

export interface RewriteOptions {
  /** Visit object keys too (in document order, each before its value). */
  readonly keys?: boolean;
}

/**
 * A copy of `value` with every string value passed through `visit` (object keys too with
 * `options.keys`; keys are kept otherwise).
 * Strings are visited in document order, one at a time.
 */
export async function rewriteJsonStrings(
  value: JsonValue,
  visit: (text: string, site: StringSite) => Promise<string>,
  maxDepth = MAX_JSON_DEPTH,
  options: RewriteOptions = {},
): Promise<JsonValue> {
  const walk = async (node: JsonValue, site: StringSite, depth: number): Promise<JsonValue> => {
    if (depth > maxDepth) {
      throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `JSON nested deeper than ${maxDepth} levels`, {
        details: { field: 'body', depth: maxDepth },
      });
    }
    if (typeof node === 'string') return visit(node, site);
    if (node === null || typeof node !== 'object') return node;
    if (Array.isArray(node)) {
      const out: JsonValue[] = [];
      for (let i = 0; i < node.length; i++) {
        out.push(await walk(node[i]!, { key: i, parent: node, path: [...site.path, i] }, depth + 1));
      }
      return out;
    }
    const out: { [key: string]: JsonValue } = {};
    for (const [key, child] of Object.entries(node)) {
      const path = [...site.path, key];
      const name = options.keys === true ? await visit(key, { key, parent: node, path, isKey: true }) : key;
      if (Object.hasOwn(out, name)) {
        throw new CoatcheckError(
          'CC_ERR_INVALID_ARGUMENT',
          'two object keys became the same after inspection',
          {
            details: { field: 'body' },
          },
        );
      }
      Object.defineProperty(out, name, {
        value: await walk(child, { key, parent: node, path }, depth + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  };
  return walk(value, { key: null, parent: null, path: [] }, 0);
}

/**
 * True when some object in the JSON text `text` repeats a key. `JSON.parse` keeps the
 * last of them, while another parser may take the first: a document that means two
 * things is refused rather than inspected one way and read another. Linear, no
 * allocation per character; call it on text that `JSON.parse` accepted.
 */
export function hasDuplicateKeys(text: string): boolean {
  const stack: (Set<string> | null)[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b) stack.push(new Set());
    else if (c === 0x5b) stack.push(null);
    else if (c === 0x7d || c === 0x5d) stack.pop();
    else if (c === 0x22) {
      let j = i + 1;
      while (j < text.length && text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c ? 2 : 1;
      const literal = text.slice(i, j + 1);
      let k = j + 1;
      while (k < text.length && /\s/.test(text[k]!)) k++;
      const top = stack.at(-1);
      if (text.charCodeAt(k) === 0x3a && top !== undefined && top !== null) {
        const key = JSON.parse(literal) as string;
        if (top.has(key)) return true;
        top.add(key);
      }
      i = j;
    }
  }
  return false;
}
