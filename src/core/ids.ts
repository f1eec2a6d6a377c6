import { randomBase62 } from './base62.js';

/** Public record ids: a type prefix and 16 base62 characters (95 bits). Not secret. */
export type IdPrefix = 'sec' | 'tkt' | 'agt' | 'con' | 'inc' | 'key' | 'ses' | 'apr' | 'wfl' | 'rly' | 'ssk';

export function newId(prefix: IdPrefix): string {
  return `${prefix}_${randomBase62(16)}`;
}

export function newIncidentId(): string {
  return newId('inc');
}
