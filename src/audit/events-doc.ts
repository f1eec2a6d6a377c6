import { AUDIT_EVENTS } from './events.js';

export const AUDIT_EVENTS_BEGIN =
  '<!-- audit-events:begin (generated from src/audit/events.ts by npm run docs:errors) -->';
export const AUDIT_EVENTS_END = '<!-- audit-events:end -->';

/** The event table of docs/audit.md, generated from the typed union's registry; a test keeps them equal. */
export function renderAuditEventsTable(): string {
  const rows = Object.entries(AUDIT_EVENTS).map(
    ([type, when]) => `| \`${type}\` | ${when.replaceAll('|', '\\|')} |`,
  );
  return `${AUDIT_EVENTS_BEGIN}
| Type | Written when |
|---|---|
${rows.join('\n')}
${AUDIT_EVENTS_END}`;
}

/** `doc` with the text between the markers replaced by the current table. */
export function withAuditEventsTable(doc: string): string {
  const start = doc.indexOf(AUDIT_EVENTS_BEGIN);
  const end = doc.indexOf(AUDIT_EVENTS_END);
  if (start < 0 || end < start) throw new Error('docs/audit.md lacks the audit-events markers');
  return doc.slice(0, start) + renderAuditEventsTable() + doc.slice(end + AUDIT_EVENTS_END.length);
}
