import type { CoatcheckError, ErrorCode } from '../../core/errors.js';
import { errorResponse } from './protocol/encode.js';

/**
 * The one place a CoatcheckError becomes a PostgreSQL ErrorResponse. The SQLSTATE is
 * chosen by code; the message is the error's own (ids and rule names, never values),
 * with the stable code as the detail so clients and scripts can match on it.
 */
const SQLSTATE: Partial<Record<ErrorCode, string>> = {
  CC_ERR_PG_PROTOCOL: '08P01',
  CC_ERR_PG_MESSAGE_TOO_LARGE: '08P01',
  CC_ERR_PG_UNSUPPORTED: '0A000',
  CC_ERR_PG_TLS_REQUIRED: '28000',
  CC_ERR_PG_LOGIN_FAILED: '28P01',
  CC_ERR_PG_DATABASE_INVALID: '3D000',
  CC_ERR_PG_STATEMENT_DENIED: '42501',
  CC_ERR_PG_APPROVAL_REQUIRED: '42501',
  CC_ERR_GATEWAY_DENIED: '42501',
  CC_ERR_POLICY_DENIED: '42501',
  CC_ERR_APPROVAL_DENIED: '42501',
  CC_ERR_APPROVAL_REQUIRED: '42501',
  CC_ERR_PG_STATEMENT_UNPARSABLE: '42601',
  CC_ERR_PG_UPSTREAM_UNREACHABLE: '08001',
  CC_ERR_PG_UPSTREAM_AUTH: '08004',
  CC_ERR_PG_MASKING_FAILED: 'XX000',
  CC_ERR_PG_MASK_LINEAGE: '42501',
  CC_ERR_PG_TOO_MANY_CONNECTIONS: '53300',
  CC_ERR_PG_SETTING_PINNED: '42501',
  CC_ERR_PG_ENCODING_UNSUPPORTED: '22023',
  CC_ERR_PG_TEXT_INVALID: '22021',
  CC_ERR_PG_SYNTAX_UNSUPPORTED: '0A000',
  CC_ERR_PG_UPSTREAM_VERSION: '08004',
  CC_ERR_PG_STATEMENT_TOO_LARGE: '54000',
  CC_ERR_PG_LOGIN_PENDING_LIMIT: '53300',
  CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS: '53300',
  CC_ERR_GATEWAY_STOPPING: '57P01',
  CC_ERR_RECORDING_BACKLOG: '53000',
  CC_ERR_GATEWAY_SESSION_TERMINATED: '57P01',
  CC_ERR_TICKET_REVOKED: '57P01',
  CC_ERR_AGENT_REVOKED: '57P01',
  CC_ERR_TICKET_SECRET_ERASED: '57P01',
  CC_ERR_AUDIT_UNAVAILABLE: '58000',
  CC_ERR_STORE_UNAVAILABLE: '58000',
  // The relay carrying the upstream connection went away: connection_failure.
  CC_ERR_RELAY_STREAM_LOST: '08006',
  CC_ERR_RELAY_UNAVAILABLE: '08001',
};

export function sqlstateFor(code: ErrorCode): string {
  if (SQLSTATE[code] !== undefined) return SQLSTATE[code]!;
  // A ticket refused inside a statement (wrong agent, wrong connection, expired...): insufficient privilege.
  if (code.startsWith('CC_ERR_TICKET_')) return '42501';
  return 'XX000';
}

export function toErrorResponse(error: CoatcheckError, severity: 'ERROR' | 'FATAL' = 'ERROR'): Buffer {
  return errorResponse(sqlstateFor(error.code), error.message, { severity, detail: error.code });
}
