import { ERROR_CODES } from './errors.js';

/** docs/errors.md, generated from the code registry (`npm run docs:errors`); a test keeps them equal. */
export function renderErrorsDoc(): string {
  const escapeCell = (text: string) => text.replaceAll('|', '\\|');
  const rows = Object.entries(ERROR_CODES).map(
    ([code, info]) =>
      `| \`${code}\` | ${info.status} | ${escapeCell(info.description)} | ${escapeCell(info.solution)} |`,
  );
  return `# Error codes

Every error coatcheck reports carries a stable \`code\`. Match on the code, never on the
message: messages may be reworded, codes are never renamed once published. Messages name
ids, fields and fingerprints — never a secret value, a ticket or a key.

Where errors appear:

- **CLI**: \`coatcheck: CODE: message\` on stderr, or \`{"error": {"code", "message", "details"}}\`
  on stdout with \`--json\`. Exit codes: 0 success, 1 the operation was refused or found a
  problem, 2 the command line or config is wrong, 3 the environment is wrong (no home, no or
  wrong master key, store or server unavailable, internal error). See [cli.md](cli.md).
- **Admin API and HTTP front-end**: the HTTP status below and a JSON body
  \`{"error": {"code", "message", "details"}}\`.
- **Audit log**: refusals are recorded as \`token.refused\` with the code.

This file is generated from \`src/core/errors.ts\` by \`npm run docs:errors\`.

| Code | HTTP | Description | How to solve |
|---|---|---|---|
${rows.join('\n')}
`;
}
