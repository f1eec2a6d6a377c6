import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/**
 * Gateway metrics. Labels are closed sets chosen by the gateway (front-end, method,
 * status class, error code, outcome) — never a path, a header, a ticket or a value.
 */
export interface GatewayMetrics {
  readonly requests: Counter<'frontend' | 'method' | 'status'>;
  readonly exchanges: Counter<'frontend' | 'outcome'>;
  readonly refusals: Counter<'frontend' | 'code'>;
  readonly responseSecrets: Counter<'frontend'>;
  readonly recordingFailures: Counter<'frontend'>;
  readonly duration: Histogram<'frontend' | 'phase'>;
  /** Responses refused because the principal registered too many found secrets. */
  readonly foundSecretsRefused: Counter<'frontend'>;
  /** Request body bytes buffered right now (all HTTP front-ends of this process). */
  readonly bodyBytesInFlight: Gauge;
  /** Requests refused by the in-flight body budget (`global` or `agent`). */
  readonly bodyBudgetRefusals: Counter<'scope'>;
  /** Statements a database front-end handled, by statement class and outcome (`ok`, `error`, `refused`). */
  readonly statements: Counter<'frontend' | 'class' | 'outcome'>;
  /** Sessions ended, by front-end and outcome (`ok` or the error code): counted by the driver's session hook. */
  readonly sessions: Counter<'frontend' | 'outcome'>;
  /** Sessions open right now, by front-end. */
  readonly sessionsOpen: Gauge<'frontend'>;
  /** Exchange steps (decision, tickets, credentials) per front-end and outcome, from the driver's session hook. */
  readonly sessionExchanges: Counter<'frontend' | 'step' | 'outcome'>;
  /** Client connections a driver listener holds right now, by front-end. */
  readonly connectionsOpen: Gauge<'frontend'>;
}

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** Collapse a method to a closed set, so a client cannot grow the label space. */
export function methodLabel(method: string | undefined): string {
  return method !== undefined && METHODS.has(method) ? method : 'OTHER';
}

export function statusLabel(status: number): string {
  return `${Math.floor(status / 100)}xx`;
}

/**
 * A finished HTTP request counted (method and status class) and timed (`phase: total`, from
 * `startedMs` on performance.now()'s clock), its status noted in the session summary unless
 * already there. Returns the status: 0 when no answer was sent.
 */
export function countHttpRequest(
  metrics: Pick<GatewayMetrics, 'requests' | 'duration'>,
  frontend: string,
  exchange: { req: IncomingMessage; res: ServerResponse; summary: Record<string, unknown> },
  startedMs: number,
): number {
  const status = exchange.res.headersSent ? exchange.res.statusCode : 0;
  exchange.summary.status ??= status;
  metrics.requests.inc({ frontend, method: methodLabel(exchange.req.method), status: statusLabel(status) });
  metrics.duration.observe({ frontend, phase: 'total' }, (performance.now() - startedMs) / 1000);
  return status;
}

export function createGatewayMetrics(registry: Registry): GatewayMetrics {
  const registers = [registry];
  return {
    requests: new Counter({
      name: 'coatcheck_http_requests_total',
      help: 'Requests handled by a front-end, by method and status class.',
      labelNames: ['frontend', 'method', 'status'],
      registers,
    }),
    exchanges: new Counter({
      name: 'coatcheck_http_exchanges_total',
      help: 'Ticket exchanges by outcome (released, or the refusal code).',
      labelNames: ['frontend', 'outcome'],
      registers,
    }),
    refusals: new Counter({
      name: 'coatcheck_http_refusals_total',
      help: 'Requests refused by the gateway, by error code.',
      labelNames: ['frontend', 'code'],
      registers,
    }),
    responseSecrets: new Counter({
      name: 'coatcheck_http_response_secrets_total',
      help: 'Secrets found in upstream responses and replaced by tickets.',
      labelNames: ['frontend'],
      registers,
    }),
    recordingFailures: new Counter({
      name: 'coatcheck_http_recording_failures_total',
      help: 'Session recordings that could not be written.',
      labelNames: ['frontend'],
      registers,
    }),
    duration: new Histogram({
      name: 'coatcheck_http_duration_seconds',
      help: 'Time spent per phase: exchange (tickets + credentials), upstream (until response headers), total.',
      labelNames: ['frontend', 'phase'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    foundSecretsRefused: new Counter({
      name: 'coatcheck_found_secrets_refused_total',
      help: 'Responses refused because the principal reached its found-secret registration limit.',
      labelNames: ['frontend'],
      registers,
    }),
    bodyBytesInFlight: new Gauge({
      name: 'coatcheck_http_body_bytes_in_flight',
      help: 'Request body bytes the HTTP front-ends hold in memory right now.',
      registers,
    }),
    bodyBudgetRefusals: new Counter({
      name: 'coatcheck_http_body_budget_refusals_total',
      help: 'Requests refused by the in-flight body budget, by scope (global or agent).',
      labelNames: ['scope'],
      registers,
    }),
    statements: new Counter({
      name: 'coatcheck_statements_total',
      help: 'Statements handled by a database front-end, by statement class and outcome (ok, error, refused).',
      labelNames: ['frontend', 'class', 'outcome'],
      registers,
    }),
    sessions: new Counter({
      name: 'coatcheck_sessions_total',
      help: 'Gateway sessions ended, by front-end and outcome (ok, or the error code).',
      labelNames: ['frontend', 'outcome'],
      registers,
    }),
    sessionsOpen: new Gauge({
      name: 'coatcheck_sessions_open',
      help: 'Gateway sessions open right now, by front-end.',
      labelNames: ['frontend'],
      registers,
    }),
    sessionExchanges: new Counter({
      name: 'coatcheck_session_exchanges_total',
      help: 'Exchange steps in sessions (decision, tickets, credentials), by front-end and outcome.',
      labelNames: ['frontend', 'step', 'outcome'],
      registers,
    }),
    connectionsOpen: new Gauge({
      name: 'coatcheck_connections_open',
      help: 'Client connections held by a front-end listener right now.',
      labelNames: ['frontend'],
      registers,
    }),
  };
}

const metricsByRegistry = new WeakMap<Registry, GatewayMetrics>();

/**
 * The gateway metrics on `registry`, made once: every front-end of a process counts into
 * the one registry the admin API serves at /metrics, told apart by the `frontend` label
 * (the `coatcheck_http_` names are kept from when only HTTP front-ends counted).
 */
export function gatewayMetricsFor(registry: Registry): GatewayMetrics {
  let metrics = metricsByRegistry.get(registry);
  if (metrics === undefined) {
    metrics = createGatewayMetrics(registry);
    metricsByRegistry.set(registry, metrics);
  }
  return metrics;
}
