import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { ERROR_CODES } from './errors.js';
import { renderErrorsDoc } from './errors-doc.js';

it('docs/errors.md lists exactly the codes in the registry (run `npm run docs:errors` after adding one)', () => {
  const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  expect(doc).toBe(renderErrorsDoc());
  for (const code of Object.keys(ERROR_CODES)) expect(code).toMatch(/^CC_ERR_[A-Z0-9_]+$/);
});
