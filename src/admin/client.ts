import { ZodError } from 'zod';
import { CoatcheckError, ERROR_CODES, type ErrorCode } from '../core/errors.js';
import type { Context } from '../server/context.js';
import { fromZodError } from './http-errors.js';
import { type OperationInput, type OperationName, type OperationOutput, operations } from './operations.js';

/** How the CLI reaches the operations: over the admin API, or in process against the store. */
export interface AdminClient {
  readonly mode: 'remote' | 'local';
  call<N extends OperationName>(name: N, input: OperationInput<N>): Promise<OperationOutput<N>>;
  close(): Promise<void>;
}

export function createLocalClient(ctx: Context, actor = 'admin:cli'): AdminClient {
  return {
    mode: 'local',
    async call(name, input) {
      const operation = operations[name];
      let parsed: unknown;
      try {
        parsed = operation.input.parse(input);
      } catch (error) {
        if (error instanceof ZodError) throw fromZodError(error);
        throw error;
      }
      return (operation.run as (c: Context, i: unknown, a: string) => Promise<never>)(ctx, parsed, actor);
    },
    close: () => ctx.close(),
  };
}

export function createRemoteClient(baseUrl: string, adminKey: string): AdminClient {
  return {
    mode: 'remote',
    async call(name, input) {
      const operation = operations[name];
      const body: Record<string, unknown> = { ...(input as Record<string, unknown>) };
      const path = operation.path.replace(/:([A-Za-z]+)/g, (_, param: string) => {
        const value = encodeURIComponent(String(body[param] ?? ''));
        delete body[param];
        return value;
      });
      const url = new URL(path, baseUrl);
      if (operation.method === 'GET') {
        for (const [key, value] of Object.entries(body))
          if (value !== undefined) url.searchParams.set(key, String(value));
      }
      let response: Response;
      try {
        response = await fetch(url, {
          method: operation.method,
          headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
          body: operation.method === 'GET' ? undefined : JSON.stringify(body),
        });
      } catch (cause) {
        throw new CoatcheckError(
          'CC_ERR_SERVER_UNREACHABLE',
          `the coatcheck server at ${baseUrl} does not answer`,
          { cause },
        );
      }
      const text = await response.text();
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new CoatcheckError(
          'CC_ERR_SERVER_UNREACHABLE',
          `the server at ${baseUrl} answered ${response.status} without JSON`,
        );
      }
      if (!response.ok) {
        const error = (
          parsed as { error?: { code?: string; message?: string; details?: Record<string, unknown> } }
        ).error;
        const code = (error?.code && error.code in ERROR_CODES ? error.code : 'CC_ERR_INTERNAL') as ErrorCode;
        throw new CoatcheckError(
          code,
          error?.message ?? `server answered ${response.status}`,
          error?.details ? { details: error.details } : undefined,
        );
      }
      return parsed as never;
    },
    async close() {},
  };
}
