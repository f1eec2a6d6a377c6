import * as z from 'zod';
import { ERROR_CODES } from '../core/errors.js';
import { operations } from './operations.js';

/** The OpenAPI 3.1 document, generated from the operation table so it cannot drift. */
export function openApiDocument(version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const [name, operation] of Object.entries(operations)) {
    const openPath = operation.path.replace(/:([A-Za-z]+)/g, '{$1}');
    const params = [...operation.path.matchAll(/:([A-Za-z]+)/g)].map((m) => m[1]!);
    const schema = z.toJSONSchema(operation.input, { io: 'input', unrepresentable: 'any' }) as Record<
      string,
      unknown
    >;
    const properties = (schema.properties ?? {}) as Record<string, unknown>;
    const parameters: unknown[] = params.map((p) => ({
      name: p,
      in: 'path',
      required: true,
      schema: { type: 'string' },
    }));
    const entry: Record<string, unknown> = {
      operationId: name,
      summary: operation.summary,
      security: [{ adminKey: [] }],
      responses: {
        '200': { description: 'Success', content: { 'application/json': { schema: { type: 'object' } } } },
        default: {
          description: 'Error',
          content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
        },
      },
    };
    if (operation.method === 'GET') {
      for (const [key, value] of Object.entries(properties)) {
        if (!params.includes(key))
          parameters.push({ name: key, in: 'query', required: false, schema: value });
      }
    } else if (Object.keys(properties).some((key) => !params.includes(key))) {
      entry.requestBody = { required: true, content: { 'application/json': { schema } } };
    }
    if (parameters.length > 0) entry.parameters = parameters;
    paths[openPath] = { ...(paths[openPath] ?? {}), [operation.method.toLowerCase()]: entry };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'coatcheck admin API', version },
    components: {
      securitySchemes: {
        adminKey: { type: 'http', scheme: 'bearer', description: 'The admin key made by `coatcheck init`.' },
      },
      schemas: {
        Error: {
          type: 'object',
          properties: {
            error: {
              type: 'object',
              properties: {
                code: { type: 'string', enum: Object.keys(ERROR_CODES) },
                message: { type: 'string' },
                details: { type: 'object' },
              },
              required: ['code', 'message'],
            },
          },
        },
      },
    },
    paths,
  };
}
