// Regenerates the docs that are derived from code. Run: npm run docs:errors
import { readFileSync, writeFileSync } from 'node:fs';
import { withAuditEventsTable } from '../src/audit/events-doc.js';
import { renderErrorsDoc } from '../src/core/errors-doc.js';

writeFileSync(new URL('../docs/errors.md', import.meta.url), renderErrorsDoc());
process.stdout.write('wrote docs/errors.md\n');
const auditDoc = new URL('../docs/audit.md', import.meta.url);
writeFileSync(auditDoc, withAuditEventsTable(readFileSync(auditDoc, 'utf8')));
process.stdout.write('wrote the event table of docs/audit.md\n');
