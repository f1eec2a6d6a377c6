import type { FrontendDeps } from '../gateway/deps.js';
import type { Context } from './context.js';

/**
 * The narrow view of the server a front-end receives: the data-path services, its config
 * sections and the metrics registry — picked here so that nothing else of the Context
 * (admin key, agent management, health, close) reaches a front-end at run time.
 */
export function frontendDeps(ctx: Context): FrontendDeps {
  return {
    home: { dir: ctx.home.dir },
    config: { http: ctx.config.http, postgres: ctx.config.postgres, proxy: ctx.config.proxy },
    clock: ctx.clock,
    store: ctx.store,
    vault: ctx.vault,
    identity: ctx.identity,
    connections: ctx.connections,
    audit: ctx.audit,
    gate: ctx.gate,
    keys: { masters: ctx.keys.masters },
    metrics: ctx.metrics,
    upstream: ctx.upstream,
  };
}
