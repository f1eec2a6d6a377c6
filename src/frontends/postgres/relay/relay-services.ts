import type { ErrorCode } from '../../../core/errors.js';
import type { PatternSet } from '../../../gateway/inspector.js';
import type { ExchangePipeline } from '../../../gateway/pipeline.js';
import type { OutputIndex } from '../backend-inspect.js';
import type { SqlClassifier, StatementClass } from '../sql/classify.js';
import type { StatementPolicy } from '../statement-policy.js';

/** What the PostgreSQL relay is given by its front-end, and what it reports of each statement. */
export interface StatementEvent {
  readonly sql: string;
  readonly class: StatementClass | 'unparsable' | 'unknown';
  readonly decision: 'allow' | 'deny';
  readonly rule: string | null;
  readonly code: ErrorCode | null;
  readonly durationMs: number;
  readonly rows: number;
  readonly outcome: 'ok' | 'error' | 'refused';
  readonly tickets: readonly string[];
  /** Refusals are batched: how many this event stands for, and the distinct ones. */
  readonly count?: number;
  readonly refused?: ReadonlyArray<{ sql: string; code: ErrorCode; class: string; count: number }>;
  readonly omitted?: number;
}

export interface RelayServices {
  readonly pipeline: ExchangePipeline;
  readonly classifier: SqlClassifier;
  readonly now: () => number;
  /** Known secrets as search patterns, current (rebuilt in the background when the vault changes). */
  readonly patterns: () => PatternSet;
  /** The output fast-path index (known secrets, their hex forms, detector keywords), current. */
  readonly outputIndex: () => OutputIndex;
  /** Report one statement (audit + recording); a rejection ends the session (fail closed). */
  readonly onStatement: (event: StatementEvent) => Promise<void>;
  /** Per-statement policy and approvals; absent when no policy is configured. */
  readonly statementPolicy?: StatementPolicy | null;
}
