import { ZodError } from 'zod';
import { CoatcheckError } from '../core/errors.js';
import { newIncidentId } from '../core/ids.js';

// Re-exported so callers test for it without importing zod's whole namespace (a dynamic
// import('zod') keeps every export, locales included, in the CLI bundle).
export { ZodError };

/** Turn validation failures into CC_ERR_INVALID_ARGUMENT naming the field (never echoing its value). */
export function fromZodError(error: ZodError): CoatcheckError {
  const issue = error.issues[0];
  const field = issue?.path.map(String).join('.') || 'input';
  return new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `${field}: ${issue?.message ?? 'invalid'}`, {
    details: { field },
  });
}

/** The one place where an admin-API failure becomes a status and a JSON body. */
export function toHttpError(error: unknown): {
  status: number;
  body: { error: Record<string, unknown> };
  incident?: string;
} {
  if (error instanceof ZodError) error = fromZodError(error);
  if (error instanceof CoatcheckError) return { status: error.status, body: { error: error.toJSON() } };
  const incident = newIncidentId();
  return {
    status: 500,
    body: {
      error: {
        code: 'CC_ERR_INTERNAL',
        message: `internal error (incident ${incident})`,
        details: { incident },
      },
    },
    incident,
  };
}
