// The `policy test` file format. Loaded only by that command (a dynamic import from policy.ts),
// so zod and yaml stay off every other command's start.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import * as z from 'zod';
import { CoatcheckError } from '../core/errors.js';

/** One expected decision in a `policy test` file. */
export interface TestCase {
  name?: string;
  principal: string;
  groups?: string[];
  action: string;
  resource: string;
  context?: Record<string, unknown>;
  at?: string;
  expect: 'allow' | 'deny' | 'approval';
}

/** Parse a `policy test` file (YAML or JSON). */
export async function readTestCases(file: string): Promise<TestCase[]> {
  const testCase = z
    .object({
      name: z.string().max(200).optional(),
      principal: z.string(),
      groups: z.array(z.string()).optional(),
      action: z.string(),
      resource: z.string(),
      context: z.record(z.string(), z.any()).optional(),
      at: z.string().optional(),
      expect: z.enum(['allow', 'deny', 'approval']),
    })
    .strict();
  try {
    return z.array(testCase).parse(parseYaml(readFileSync(file, 'utf8')));
  } catch (error) {
    const issue = error instanceof z.ZodError ? error.issues[0] : undefined;
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      `${file}: ${issue ? `${issue.path.join('.')}: ${issue.message}` : 'cannot be read as a list of cases'}`,
      { details: { field: 'file' } },
    );
  }
}
