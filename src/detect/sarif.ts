import type { Rule } from './types.js';

/** One reported finding with its location, as the scan command prints it. */
export interface LocatedFinding {
  readonly path: string;
  readonly line: number;
  readonly column: number;
  readonly endLine: number;
  readonly endColumn: number;
  readonly start: number;
  readonly end: number;
  readonly ruleId: string;
  readonly family: string;
  readonly confidence: string;
  readonly fingerprint: string;
  readonly secretId?: string;
}

const SARIF_SCHEMA =
  'https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json';

/** SARIF 2.1.0 log for a scan. Messages name the rule and the fingerprint, never the value. */
export function toSarif(
  findings: readonly LocatedFinding[],
  rules: readonly Rule[],
  version: string,
): object {
  const used = [...new Set(findings.map((f) => f.ruleId))].sort();
  const byId = new Map(rules.map((r) => [r.id, r]));
  const index = new Map(used.map((id, i) => [id, i]));
  return {
    $schema: SARIF_SCHEMA,
    version: '2.1.0',
    runs: [
      {
        tool: {
          driver: {
            name: 'coatcheck',
            informationUri: 'https://github.com/coatcheck/coatcheck/blob/main/docs/detect.md',
            version,
            rules: used.map((id) => {
              const rule = byId.get(id);
              const title = rule?.title ?? 'Registered secret (known-secret matcher)';
              return {
                id,
                name: id,
                shortDescription: { text: title },
                fullDescription: { text: `${title}. Family: ${rule?.family ?? 'known-secret'}.` },
                helpUri: 'https://github.com/coatcheck/coatcheck/blob/main/docs/detect.md#rule-list',
                properties: { family: rule?.family ?? 'known-secret', tags: ['security', 'secret'] },
              };
            }),
          },
        },
        results: findings.map((f) => ({
          ruleId: f.ruleId,
          ruleIndex: index.get(f.ruleId),
          level: f.family === 'pii' ? 'warning' : 'error',
          message: {
            text: `${byId.get(f.ruleId)?.title ?? 'Registered secret'} found (fingerprint ${f.fingerprint}).`,
          },
          locations: [
            {
              physicalLocation: {
                artifactLocation: { uri: f.path },
                region: {
                  startLine: f.line,
                  startColumn: f.column,
                  endLine: f.endLine,
                  endColumn: f.endColumn,
                  byteOffset: f.start,
                  byteLength: f.end - f.start,
                },
              },
            },
          ],
          partialFingerprints: { 'coatcheckValueFingerprint/v1': f.fingerprint },
          properties: { confidence: f.confidence, family: f.family },
        })),
      },
    ],
  };
}
