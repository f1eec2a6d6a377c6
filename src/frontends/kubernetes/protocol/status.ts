import type { CoatcheckError } from '../../../core/errors.js';

/**
 * A refusal as the Kubernetes API says it: a `metav1.Status` object, so kubectl prints
 * `Error from server (Forbidden): coatcheck: … [CC_ERR_…]`. The stable code is in the
 * message, in `details.causes[0].reason`, and in the `x-coatcheck-error` header.
 */
const REASONS: Readonly<Record<number, string>> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  409: 'Conflict',
  410: 'Expired',
  413: 'RequestEntityTooLarge',
  415: 'UnsupportedMediaType',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

export function statusObject(error: CoatcheckError): Record<string, unknown> {
  const code = error.status;
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: `${error.message} [${error.code}]`,
    reason: REASONS[code] ?? (code >= 500 ? 'InternalError' : 'BadRequest'),
    details: { causes: [{ reason: error.code, message: error.message }] },
    code,
  };
}

export function statusBody(error: CoatcheckError): string {
  return JSON.stringify(statusObject(error));
}
