import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { CoatcheckError, ERROR_CODES, type ErrorCode } from '../core/errors.js';
import type { Context } from '../server/context.js';
import type { OperationInput, OperationName, OperationOutput } from './operations.js';
import { ROUTES } from './routes.js';

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
      // Loaded on first use: the remote client below needs neither zod nor the handlers.
      const [{ ZodError, fromZodError }, { operations }] = await Promise.all([
        import('./http-errors.js'),
        import('./operations.js'),
      ]);
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
      const operation = ROUTES[name];
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
      let response: { status: number; text: string };
      try {
        response = await send(
          url,
          operation.method,
          adminKey,
          operation.method === 'GET' ? undefined : JSON.stringify(body),
        );
      } catch (cause) {
        throw new CoatcheckError(
          'CC_ERR_SERVER_UNREACHABLE',
          `the coatcheck server at ${baseUrl} does not answer`,
          { cause },
        );
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(response.text);
      } catch {
        throw new CoatcheckError(
          'CC_ERR_SERVER_UNREACHABLE',
          `the server at ${baseUrl} answered ${response.status} without JSON`,
        );
      }
      if (response.status < 200 || response.status > 299) {
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

/** Largest admin API answer the CLI reads (a page of audit records is far below it). */
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

/**
 * One request on its own connection, closed after the answer. node:http rather than
 * fetch: a CLI run makes one or two calls, and fetch's client costs ~100 ms to load and
 * holds keep-alive sockets that delay the process's exit by as much again.
 */
function send(
  url: URL,
  method: string,
  adminKey: string,
  body: string | undefined,
): Promise<{ status: number; text: string }> {
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method,
        agent: false,
        headers: {
          authorization: `Bearer ${adminKey}`,
          'content-type': 'application/json',
          ...(body === undefined ? {} : { 'content-length': Buffer.byteLength(body) }),
        },
      },
      (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy(new Error(`answer larger than ${MAX_RESPONSE_BYTES} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
