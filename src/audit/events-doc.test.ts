import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { AUDIT_EVENTS } from './events.js';
import { AUDIT_EVENTS_BEGIN, AUDIT_EVENTS_END, withAuditEventsTable } from './events-doc.js';

it('docs/audit.md lists exactly the kinds of the AuditEvent union (run `npm run docs:errors` after adding one)', () => {
  const doc = readFileSync(new URL('../../docs/audit.md', import.meta.url), 'utf8');
  expect(doc).toBe(withAuditEventsTable(doc));
  const table = doc.slice(doc.indexOf(AUDIT_EVENTS_BEGIN), doc.indexOf(AUDIT_EVENTS_END));
  const listed = [...table.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1]);
  expect(listed).toEqual(Object.keys(AUDIT_EVENTS));
  for (const type of listed) expect(type).toMatch(/^[a-z]+(\.[a-z]+)+$/);
});
