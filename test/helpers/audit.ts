import type { AuditEvent } from '../../src/audit/events.js';

/**
 * A record of any type and shape, for tests that exercise the log itself (chaining, batching,
 * failure) or plant records as an older version might have written them. `AuditLog.append`
 * takes only the typed events of src/audit/events.ts; only tests reach past that, here.
 */
export function untypedEvent(draft: {
  type: string;
  actor: string;
  data: Record<string, unknown>;
}): AuditEvent {
  return draft as unknown as AuditEvent;
}
