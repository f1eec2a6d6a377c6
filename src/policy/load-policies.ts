import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { CoatcheckError } from '../core/errors.js';
import { cedar } from './cedar.js';
import { CEDAR_SCHEMA } from './schema.js';

export interface LoadedPolicy {
  readonly id: string;
  readonly text: string;
  readonly file: string;
  readonly line: number;
  readonly effect: 'permit' | 'forbid';
  readonly annotations: Readonly<Record<string, string>>;
}

export interface LoadedPolicySet {
  readonly policies: readonly LoadedPolicy[];
  readonly files: readonly string[];
}

const MAX_POLICY_FILE_BYTES = 4 * 1024 * 1024;
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

function lineAt(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

function invalid(file: string, line: number | null, message: string, policy?: string): CoatcheckError {
  const where = line === null ? file : `${file}:${line}`;
  return new CoatcheckError(
    'CC_ERR_POLICY_INVALID',
    `${where}: ${policy === undefined ? '' : `policy ${policy}: `}${message}`,
    {
      details: { file, line, policy: policy ?? null },
    },
  );
}

export function policyFiles(path: string): string[] {
  let stat: ReturnType<typeof statSync>;
  try {
    stat = statSync(path);
  } catch {
    throw invalid(path, null, 'no such file or folder');
  }
  if (stat.isFile()) return [path];
  return readdirSync(path)
    .filter((name) => name.endsWith('.cedar'))
    .sort()
    .map((name) => join(path, name));
}

function defaultId(file: string, line: number): string {
  const name = basename(file)
    .replace(/[^A-Za-z0-9_.:-]/g, '_')
    .slice(0, 100);
  return `${/^[A-Za-z0-9]/.test(name) ? '' : 'p'}${name}:${line}`;
}

/**
 * Read a .cedar file or a folder of them, give every policy an id (`@id("…")`, else
 * `<file>:<line>`), and validate the whole set against the coatcheck schema. Any error
 * names the file, the line and the policy.
 */
export function loadPolicies(path: string, cwd = process.cwd()): LoadedPolicySet {
  const files = policyFiles(path);
  const policies: LoadedPolicy[] = [];
  const seen = new Map<string, LoadedPolicy>();
  for (const file of files) {
    const shown = relative(cwd, file) || file;
    const stat = statSync(file);
    if (stat.size > MAX_POLICY_FILE_BYTES) throw invalid(shown, null, 'file is larger than 4 MiB');
    const text = readFileSync(file, 'utf8');
    const parsed = cedar().checkParsePolicySet({ staticPolicies: text });
    if (parsed.type === 'failure') {
      const error = parsed.errors[0]!;
      const location = error.sourceLocations?.[0];
      throw invalid(shown, location ? lineAt(text, location.start) : null, error.message);
    }
    const parts = cedar().policySetTextToParts(text);
    if (parts.type === 'failure')
      throw invalid(shown, null, parts.errors[0]?.message ?? 'cannot be split into policies');
    if (parts.policy_templates.length > 0) throw invalid(shown, null, 'policy templates are not supported');
    let searchFrom = 0;
    for (const part of parts.policies) {
      const offset = text.indexOf(part, searchFrom);
      const line = offset === -1 ? 1 : lineAt(text, offset);
      if (offset !== -1) searchFrom = offset + part.length;
      const json = cedar().policyToJson(part);
      if (json.type === 'failure') throw invalid(shown, line, json.errors[0]?.message ?? 'cannot be read');
      const annotations = json.json.annotations ?? {};
      // Without @id: `<file name>:<line>` (the name, not the path: a path's `/` is not an id
      // character, and the id must not change with the directory the server starts in).
      const id = annotations.id ?? defaultId(file, line);
      if (!ID_RE.test(id)) throw invalid(shown, line, '@id must be 1-128 letters, digits or . _ : -');
      if (seen.has(id)) {
        const other = seen.get(id)!;
        throw invalid(shown, line, `duplicate policy id (also at ${other.file}:${other.line})`, id);
      }
      if (annotations.approval !== undefined && annotations.approval !== 'required') {
        throw invalid(shown, line, '@approval must be "required"', id);
      }
      if (
        json.json.effect === 'forbid' &&
        (annotations.approval !== undefined || annotations.mask !== undefined)
      ) {
        throw invalid(shown, line, '@approval and @mask apply to permit policies only', id);
      }
      const policy: LoadedPolicy = {
        id,
        text: part,
        file: shown,
        line,
        effect: json.json.effect,
        annotations,
      };
      seen.set(id, policy);
      policies.push(policy);
    }
  }
  const validation = cedar().validate({
    schema: CEDAR_SCHEMA,
    policies: { staticPolicies: Object.fromEntries(policies.map((p) => [p.id, p.text])) },
    validationSettings: { mode: 'strict' },
  });
  if (validation.type === 'failure') {
    throw invalid(files[0] ?? path, null, validation.errors[0]?.message ?? 'schema error');
  }
  const first = validation.validationErrors[0];
  if (first !== undefined) {
    const policy = seen.get(first.policyId);
    const location = first.error.sourceLocations?.[0];
    const line =
      policy === undefined ? null : policy.line + (location ? lineAt(policy.text, location.start) - 1 : 0);
    const help = first.error.help ? ` (${first.error.help})` : '';
    throw invalid(policy?.file ?? path, line, `${first.error.message}${help}`, first.policyId);
  }
  return { policies, files };
}
