import { isMap, isSeq, LineCounter, parseDocument } from 'yaml';
import { configError, MAX_CONFIG_BYTES } from './config-error.js';
import { type Config, configSchema } from './schema.js';

/**
 * Parse and validate config text: YAML syntax, the schema, unique connection names. A pure
 * function of the text (the environment is applied after, in load-config.ts), so its result
 * can be cached by the text's hash. Errors name the file, the line and the field.
 */
export function validateConfigText(text: string, file: string): Config {
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES)
    throw configError(file, null, '', 'file is larger than 1 MiB');
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const first = doc.errors[0];
  if (first !== undefined) {
    const line = first.linePos?.[0]?.line ?? lineCounter.linePos(first.pos[0]).line;
    throw configError(file, line, '', `YAML syntax error: ${first.code.toLowerCase().replaceAll('_', ' ')}`);
  }
  const raw = doc.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw configError(file, 1, '', 'the top level must be a mapping');
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    let path = [...issue.path] as (string | number)[];
    if (issue.code === 'unrecognized_keys') path = [...path, ...(issue.keys as string[]).slice(0, 1)];
    // Find the closest node that exists in the document to report its line.
    let line: number | null = null;
    for (let depth = path.length; depth >= 0 && line === null; depth--) {
      const prefix = path.slice(0, depth);
      const node = prefix.length === 0 ? doc.contents : doc.getIn(prefix, true);
      let range: readonly number[] | null | undefined;
      if (prefix.length > 0 && depth === path.length && issue.code === 'unrecognized_keys') {
        // Point at the key itself.
        const parent = doc.getIn(prefix.slice(0, -1), true) ?? doc.contents;
        if (isMap(parent)) {
          const pair = parent.items.find(
            (p) => (p.key as { value?: unknown } | null)?.value === prefix.at(-1),
          );
          range = (pair?.key as { range?: number[] } | null)?.range;
        }
      }
      if (range === undefined || range === null) {
        range = (node as { range?: number[] } | null | undefined)?.range;
      }
      if (range) line = lineCounter.linePos(range[0]!).line;
      if (node !== undefined && (isMap(node) || isSeq(node)) && line !== null) break;
    }
    const field = path
      .map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`))
      .join('')
      .replace(/^\./, '');
    const problem = issue.code === 'unrecognized_keys' ? 'unknown field' : issue.message;
    throw configError(file, line, field, problem);
  }
  const config = result.data;
  const names = new Set<string>();
  for (const [index, connection] of config.connections.entries()) {
    if (names.has(connection.name)) {
      const node = doc.getIn(['connections', index, 'name'], true) as { range?: number[] } | undefined;
      const line = node?.range ? lineCounter.linePos(node.range[0]!).line : null;
      throw configError(
        file,
        line,
        `connections[${index}].name`,
        `duplicate connection name ${connection.name}`,
      );
    }
    names.add(connection.name);
  }
  return config;
}
