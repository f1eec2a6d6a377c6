import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { rootCertificates } from 'node:tls';
import type { Registry } from 'prom-client';
import type { Dispatcher } from 'undici';
import type { Config } from '../config/schema.js';
import { CoatcheckError } from '../core/errors.js';
import type { FrontendDeps } from './deps.js';
import { chainInspectors, createDetectorInspector } from './detector-inspector.js';
import type { Mount } from './driver.js';
import { type BodyBudget, createBodyBudget } from './http-io.js';
import type { ResponseInspector } from './inspector.js';
import { createIndexedInspector, sharedKnownSecretIndex } from './known-secret-index.js';
import { gatewayMetricsFor } from './metrics.js';
import type { Decide, GatewayServices } from './pipeline.js';
import { createPolicyDecide } from './policy-decide.js';
import type { RelayDispatchers } from './relay-dispatchers.js';

/** Replacements a test or an embedding passes to an HTTP front-end. */
export interface HttpOverrides {
  /** Replace the known-secret inspector (the detection engine plugs in here). */
  readonly inspector?: ResponseInspector;
  /** Replace the default decision (policy plugs in here). */
  readonly decide?: Decide;
}

/** The pipeline services every HTTP-carried front-end shares (the driver adds log, metrics, recorder, hooks). */
export type PipelineServices = Omit<Partial<GatewayServices>, 'metrics' | 'recorder' | 'hooks' | 'log'>;

/**
 * A path prefix served on the HTTP front-end's listener by another front-end (the LLM
 * guard at /llm/, the MCP gateway at /mcp/). The composition root hands the HTTP
 * front-end these; it knows nothing of what is behind them.
 */
export interface HttpRoute {
  readonly prefix: string;
  serve(req: IncomingMessage, res: ServerResponse): Promise<void>;
  /** Release what the route holds, after the listener's connections are gone. */
  close?(): Promise<void> | void;
}

/** What the HTTP listener shares with its routes: the mount, the upstream dispatcher, the pipeline services. */
export interface HttpRouteContext {
  readonly mount: Mount;
  readonly dispatcher: Dispatcher;
  /** Dispatchers for connections that go through a relay (`via`). */
  readonly relays?: RelayDispatchers;
  readonly services: PipelineServices;
}

export type HttpRouteFactory = (context: HttpRouteContext) => HttpRoute;

const budgetByRegistry = new WeakMap<object, BodyBudget>();

/**
 * The in-flight request-body budget of this process (`http.maxInFlightBodyBytes`, and per
 * agent `http.maxInFlightBodyBytesPerAgent`), shared by the reverse proxy, the forward
 * proxy, the LLM guard and the MCP gateway, with its metrics.
 */
export function bodyBudget(deps: {
  readonly metrics: Registry;
  readonly config: Pick<Config, 'http'>;
}): BodyBudget {
  let budget = budgetByRegistry.get(deps.metrics);
  if (budget === undefined) {
    const metrics = gatewayMetricsFor(deps.metrics);
    budget = createBodyBudget({
      globalLimit: deps.config.http.maxInFlightBodyBytes,
      agentLimit: deps.config.http.maxInFlightBodyBytesPerAgent,
      onChange: (total) => metrics.bodyBytesInFlight.set(total),
      onRefuse: (scope) => metrics.bodyBudgetRefusals.inc({ scope }),
    });
    budgetByRegistry.set(deps.metrics, budget);
  }
  return budget;
}

export function upstreamCa(file: string | undefined, field = 'http.upstreamCaFile'): string[] | undefined {
  if (file === undefined) return undefined;
  try {
    return [...rootCertificates, readFileSync(file, 'utf8')];
  } catch {
    throw new CoatcheckError('CC_ERR_CONFIG_INVALID', `${field} cannot be read: ${file}`, {
      details: { field },
    });
  }
}

/** The pipeline services of an HTTP listener (reverse or forward proxy): the same services, checked at start. */
export function httpPipelineServices(deps: FrontendDeps, overrides: HttpOverrides = {}): PipelineServices {
  return {
    vault: deps.vault,
    agents: deps.identity,
    connections: deps.connections,
    audit: deps.audit,
    store: deps.store,
    clock: deps.clock,
    inspector:
      overrides.inspector ??
      (deps.config.http.detectSecrets
        ? chainInspectors(
            createIndexedInspector(sharedKnownSecretIndex(deps.vault, deps.store)),
            createDetectorInspector(),
          )
        : createIndexedInspector(sharedKnownSecretIndex(deps.vault, deps.store))),
    decide: overrides.decide ?? createPolicyDecide(deps.gate),
  };
}

/** A refusal as an HTTP answer (JSON body, the code in x-coatcheck-error); mid-body, the connection is cut. */
export function refuseHttp(req: IncomingMessage, res: ServerResponse, error: CoatcheckError): void {
  if (!req.complete) req.resume();
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: { code: error.code, message: error.message } });
  res.writeHead(error.status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'x-coatcheck-error': error.code,
    ...(req.httpVersionMajor === 2 ? {} : { connection: 'close' }),
  });
  res.end(body);
}
