import type { Logger } from 'pino';
import type { SessionRecord } from '../store/types.js';
import type { GatewayMetrics } from './metrics.js';
import type { GatewaySession, Recorder } from './session.js';

/** One step of the exchange pipeline inside a session (never a value: ids, actions and codes). */
export interface ExchangeStep {
  /** `decision` (policy), `tickets` (ticket exchange), `credentials` (a connection's injected secrets). */
  readonly step: 'decision' | 'tickets' | 'credentials';
  /** `allow`/`deny` for a decision, `released` or the refusal code otherwise. */
  readonly outcome: string;
  /** The policy action (`http:GET`, `sql:session`, `mcp:call`) when the step has one. */
  readonly action?: string;
}

/**
 * What the gateway driver calls for every session of every front-end: when it opens,
 * at each exchange step, and when it closes (with the scrubbed record). Session metrics
 * and the session recordings (`coatcheck sessions`) are two of these hooks; a hook must
 * not block and never sees a secret value.
 */
export interface SessionHooks {
  open(session: GatewaySession): void;
  exchange(session: GatewaySession, step: ExchangeStep): void;
  close(session: GatewaySession, record: SessionRecord): void;
}

/** The session recordings: each closed session's record goes to the recorder (the store, batched). */
export function recordingHook(recorder: Recorder): SessionHooks {
  return {
    open: () => undefined,
    exchange: () => undefined,
    // `off`: the connection keeps no record of its sessions at all.
    close: (session, record) => {
      if (session.recordingMode !== 'off') recorder.record(record);
    },
  };
}

/** Session counts in the one metrics registry, labelled by front-end. */
export function metricsHook(metrics: GatewayMetrics): SessionHooks {
  const open = new WeakSet<GatewaySession>();
  return {
    open(session) {
      if (open.has(session)) return;
      open.add(session);
      metrics.sessionsOpen.inc({ frontend: session.frontend });
    },
    exchange(session, step) {
      metrics.sessionExchanges.inc({ frontend: session.frontend, step: step.step, outcome: step.outcome });
    },
    close(session, record) {
      if (open.delete(session)) metrics.sessionsOpen.dec({ frontend: session.frontend });
      metrics.sessions.inc({ frontend: session.frontend, outcome: record.outcome });
    },
  };
}

/** Call every hook in order; one that throws is logged (its name only) and does not stop the others or the session. */
export function fanOutHooks(hooks: readonly SessionHooks[], log: Logger): SessionHooks {
  const each = (call: (hook: SessionHooks) => void) => {
    for (const hook of hooks) {
      try {
        call(hook);
      } catch (error) {
        log.error({ errName: safeName(error) }, 'a session hook failed');
      }
    }
  };
  return {
    open: (session) => each((h) => h.open(session)),
    exchange: (session, step) => each((h) => h.exchange(session, step)),
    close: (session, record) => each((h) => h.close(session, record)),
  };
}

/** An error's class name for a log line, only when it looks like one (a thrown string could be anything). */
export function safeName(error: unknown): string {
  const name = (error as { name?: unknown } | null)?.name;
  return typeof name === 'string' && /^[A-Za-z][A-Za-z0-9_]{0,63}$/.test(name) ? name : 'unknown';
}
