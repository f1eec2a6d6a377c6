/**
 * `textClean`: the one place where text is cleaned against the vault for the CLI (`scrub`,
 * `tokenize`). It runs where the vault is open — in `serve`, or in the CLI itself when no
 * server runs — so the CLI never receives a raw secret value: it sends text and gets the
 * cleaned text back. The detector is the one the SDK and the LLM guard use: every secret
 * rule plus the known-secret matcher over the vault's live secrets.
 */
import type { Detector } from '../detect/detector.js';
import { createDetector } from '../detect/detector.js';
import { maskFor, tokenizeText } from '../detect/scrub.js';
import type { Finding } from '../detect/types.js';
import { currentSecretMatcher, sharedKnownSecretIndex } from '../gateway/known-secret-index.js';
import type { Context } from '../server/context.js';

export interface TextCleanRequest {
  readonly text: string;
  readonly mode: 'mask' | 'tokenize';
  /** Scan each line on its own (what `scrub` does); otherwise the text as a whole. */
  readonly lines: boolean;
  readonly pii: boolean;
  /** Tokenize: the agent principal the tickets are bound to. */
  readonly principal?: string;
  readonly destinations?: readonly string[];
  readonly source: string;
}

export interface TextCleanResult {
  readonly text: string;
  /** How many values were replaced; each entry names the rule (no value, no span). */
  readonly replaced: number;
  readonly rules: string[];
}

/**
 * One detector per matcher and PII setting. The matcher is the shared known-secret index's
 * (ADR 0021): a vault change is applied secret by secret, so a call after a change costs
 * no rebuild over the whole vault; while the index is stale the call is refused.
 */
const detectors = new WeakMap<object, Map<boolean, Detector>>();

export async function cleaningDetector(
  ctx: Pick<Context, 'vault' | 'store'>,
  pii: boolean,
): Promise<Detector> {
  const matcher = await currentSecretMatcher(sharedKnownSecretIndex(ctx.vault, ctx.store));
  let byPii = detectors.get(matcher);
  if (byPii === undefined) {
    byPii = new Map();
    detectors.set(matcher, byPii);
  }
  let detector = byPii.get(pii);
  if (detector === undefined) {
    detector = createDetector({ knownSecrets: matcher, pii });
    byPii.set(pii, detector);
  }
  return detector;
}

function piecesOf(text: string, lines: boolean): string[] {
  if (!lines) return [text];
  const out: string[] = [];
  let at = 0;
  for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', at)) {
    out.push(text.slice(at, nl + 1));
    at = nl + 1;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

const KIND_RE = /^[a-z0-9-]{1,48}$/;

export async function cleanText(
  ctx: Pick<Context, 'vault' | 'store'>,
  request: TextCleanRequest,
  actor: string,
): Promise<TextCleanResult> {
  const detector = await cleaningDetector(ctx, request.pii);
  const rules: string[] = [];
  let out = '';
  if (request.mode === 'mask') {
    for (const piece of piecesOf(request.text, request.lines)) {
      const findings = detector.scan(piece);
      let at = 0;
      for (const f of findings) {
        out += piece.slice(at, f.start) + maskFor(f);
        at = f.end;
        rules.push(f.ruleId);
      }
      out += piece.slice(at);
    }
    return { text: out, replaced: rules.length, rules };
  }
  const principal = request.principal;
  if (principal === undefined) throw new Error('textClean: tokenize needs a principal');
  const context = { source: request.source };
  const mint = async (finding: Finding, value: string): Promise<string> => {
    rules.push(finding.ruleId);
    if (finding.secretId !== undefined) {
      const issued = await ctx.vault.reissueForResponse(
        finding.secretId,
        {
          principal,
          ...(request.destinations === undefined || request.destinations.length === 0
            ? {}
            : { destinations: request.destinations }),
          context,
          operator: true,
        },
        actor,
      );
      return issued.ticket;
    }
    const issued = await ctx.vault.tokenizeFound(
      Buffer.from(value, 'utf8'),
      {
        principal,
        destinations: request.destinations ?? [],
        kind: KIND_RE.test(finding.ruleId) ? finding.ruleId : 'found',
        source: request.source,
        operator: true,
      },
      actor,
    );
    return issued.ticket;
  };
  for (const piece of piecesOf(request.text, request.lines)) {
    out += (await tokenizeText(piece, mint, { detector })).text;
  }
  return { text: out, replaced: rules.length, rules };
}
