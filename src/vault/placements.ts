import { CoatcheckError } from '../core/errors.js';
import { isConnectionName, type Target } from './destinations.js';

/**
 * Where in a request a ticket stands, and so where its secret would be released:
 *
 * - `credential`: Authorization / Proxy-Authorization, the connection's injected
 *   headers, URL user info, a protocol login. The default and the only placement a
 *   secret has unless the operator adds others.
 * - `header`: any other header (Cookie, X-Api-Key, …).
 * - `query`: the URL query string.
 * - `body`: a request body (JSON, form, multipart, text).
 * - `path`: a URL path segment (APIs that put keys in paths).
 * - `sql`: SQL text or a bound parameter of a statement; stored as `sql:CONNECTION`,
 *   allowed on that connection only.
 *
 * Everything but `credential` is a place the target may echo, store or transform the
 * value, where no response scanner can be sure to find it again; that takes an explicit
 * binding.
 */
export type Placement = 'credential' | 'header' | 'query' | 'body' | 'path' | 'sql';

export const DEFAULT_PLACEMENTS: readonly string[] = ['credential'];

const SIMPLE: readonly string[] = ['credential', 'header', 'query', 'body', 'path'];

function invalid(text: string, field: string): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_PLACEMENT_INVALID',
    `${field}: ${text.slice(0, 40)} is not a placement (credential, header, query, body, path; sql only with --allow-sql CONNECTION)`,
    { details: { field } },
  );
}

/**
 * Canonical placements from `--allow-placement` values (comma-separated allowed) and
 * `--allow-sql` connection names. `credential` is always included.
 */
export function normalizePlacements(
  placements: readonly string[] = [],
  sqlConnections: readonly string[] = [],
  field = '--allow-placement',
): string[] {
  const out = ['credential'];
  for (const item of placements.flatMap((p) => p.split(','))) {
    const text = item.trim().toLowerCase();
    if (text === '') continue;
    if (text.startsWith('sql:')) {
      const name = item.trim().slice(4);
      if (!isConnectionName(name)) throw invalid(item, field);
      if (!out.includes(`sql:${name}`)) out.push(`sql:${name}`);
      continue;
    }
    if (!SIMPLE.includes(text)) throw invalid(item, field);
    if (!out.includes(text)) out.push(text);
  }
  for (const name of sqlConnections) {
    if (!isConnectionName(name)) throw invalid(name, '--allow-sql');
    if (!out.includes(`sql:${name}`)) out.push(`sql:${name}`);
  }
  return out;
}

/** Does a secret with these stored placements allow release at `placement` towards `target`? */
export function placementAllowed(stored: readonly string[], placement: Placement, target: Target): boolean {
  if (placement === 'sql')
    return target.connection !== undefined && stored.includes(`sql:${target.connection}`);
  return stored.includes(placement);
}
