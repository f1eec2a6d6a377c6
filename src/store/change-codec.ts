import type { StoreChange } from './types.js';

// A change as text: the PostgreSQL adapter sends it as a NOTIFY payload, the SQLite adapter
// keeps it in its change log (store_changes) for the other processes on the same file.
// Both read it back through parseChange: whatever another process wrote is input.

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((item) => typeof item === 'string');
}

/** Validate a change read back (a NOTIFY payload, a change-log row); anything malformed is null (never a crash). */
export function parseChange(payload: string | undefined): StoreChange | null {
  if (payload === undefined) return null;
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  switch (v.type) {
    case 'ticket.revoked':
      return isStringArray(v.ids) ? { type: 'ticket.revoked', ids: v.ids } : null;
    case 'workflow.ended':
      return isStringArray(v.ids) ? { type: 'workflow.ended', ids: v.ids } : null;
    case 'secret.added':
    case 'secret.updated':
    case 'secret.erased':
    case 'agent.revoked':
    case 'relay.revoked':
    case 'agent.sshkey.removed':
      return typeof v.id === 'string' ? { type: v.type, id: v.id } : null;
    case 'approval.changed':
      return typeof v.id === 'string' ? { type: 'approval.changed', id: v.id } : null;
    case 'connection.changed':
      return typeof v.name === 'string' ? { type: 'connection.changed', name: v.name } : null;
    case 'keys.rotated':
      return { type: 'keys.rotated' };
    case 'resync':
      return { type: 'resync' };
    default:
      return null;
  }
}
