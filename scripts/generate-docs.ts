// Regenerates the docs that are derived from code. Run: npm run docs:errors
import { writeFileSync } from 'node:fs';
import { renderErrorsDoc } from '../src/core/errors-doc.js';

writeFileSync(new URL('../docs/errors.md', import.meta.url), renderErrorsDoc());
process.stdout.write('wrote docs/errors.md\n');
