import { CoatcheckError } from '../core/errors.js';

/** Parse a JSON column, turning damage into CC_ERR_STORE_CORRUPT instead of a crash. */
export function jsonColumn<T>(text: unknown, table: string, column: string): T {
  if (typeof text !== 'string') {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', `${table}.${column} is not text`, {
      details: { table, column },
    });
  }
  try {
    return JSON.parse(text) as T;
  } catch (cause) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', `${table}.${column} is not valid JSON`, {
      cause,
      details: { table, column },
    });
  }
}

export function stringArrayColumn(text: unknown, table: string, column: string): string[] {
  const value = jsonColumn<unknown>(text, table, column);
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', `${table}.${column} is not a list of strings`, {
      details: { table, column },
    });
  }
  return value;
}

export function nullableNumber(value: unknown): number | null {
  if (value === null || value === undefined) return null;
  return Number(value);
}

/**
 * `deadAmong` from rows of (id, dead reason or null): every asked id that has no row is
 * `missing`, so an id the store does not know never reads as live.
 */
export function deadMap(
  query: {
    readonly tickets: readonly string[];
    readonly agents: readonly string[];
    readonly workflows: readonly string[];
    readonly secrets: readonly string[];
  },
  rows: ReadonlyArray<Record<string, unknown>>,
): Map<string, 'revoked' | 'expired' | 'ended' | 'erased' | 'missing'> {
  const out = new Map<string, 'revoked' | 'expired' | 'ended' | 'erased' | 'missing'>();
  for (const id of [...query.tickets, ...query.agents, ...query.workflows, ...query.secrets])
    out.set(id, 'missing');
  for (const row of rows) {
    const id = String(row.id);
    const dead = row.dead;
    if (dead === null || dead === undefined) out.delete(id);
    else out.set(id, dead as 'revoked' | 'expired' | 'ended' | 'erased');
  }
  return out;
}
