import type { FrontendDeps } from '../../gateway/deps.js';
import { bodyBudget, type HttpRoute, type HttpRouteContext } from '../../gateway/http-mount.js';
import type { ResponseInspector } from '../../gateway/inspector.js';
import { createIndexedInspector, sharedKnownSecretIndex } from '../../gateway/known-secret-index.js';
import { LlmEngine } from './llm-engine.js';

/**
 * The LLM prompt guard as a route of the HTTP listener: `/llm/<connection>/v1/…`
 * (docs/llm.md), with its own pipeline (sessions and metrics labelled `llm`).
 */
export function llmRoute(
  deps: FrontendDeps,
  overrides: { readonly inspector?: ResponseInspector } = {},
): (context: HttpRouteContext) => HttpRoute & { readonly engine: LlmEngine } {
  return ({ mount, dispatcher, relays, services }) => {
    // Model answers stream (SSE): only known vault secrets are replaced there, so nothing is held
    // back longer than the longest secret. Prompts are scanned in full before they leave.
    const pipeline = mount.pipeline('llm', {
      ...services,
      inspector:
        overrides.inspector ?? createIndexedInspector(sharedKnownSecretIndex(deps.vault, deps.store)),
    });
    const engine = new LlmEngine(pipeline, {
      bodyLimit: deps.config.http.bodyLimit,
      bodyBudget: bodyBudget(deps),
      upstreamTimeoutMs: deps.config.http.upstreamTimeoutMs,
      dispatcher,
      ...(relays === undefined ? {} : { relays }),
    });
    return { prefix: '/llm/', engine, serve: (req, res) => engine.serve(req, res) };
  };
}
