import type { OperationName } from './operations.js';

/**
 * Where each admin operation lives on the admin API. The remote CLI needs only this, not
 * the operations' input schemas and handlers (which load zod and the server's modules):
 * a command that talks to a running server starts in a fraction of the time. The type
 * makes a missing operation a compile error; routes.test.ts holds it equal to operations.ts.
 */
export const ROUTES = {
  status: { method: 'GET', path: '/v1/status' },
  secretAdd: { method: 'POST', path: '/v1/secrets' },
  secretUpdate: { method: 'POST', path: '/v1/secrets/:name/bindings' },
  secretTokenize: { method: 'POST', path: '/v1/secrets/tokenize' },
  textClean: { method: 'POST', path: '/v1/text/clean' },
  secretList: { method: 'GET', path: '/v1/secrets' },
  secretRemove: { method: 'DELETE', path: '/v1/secrets/:name' },
  connectionAdd: { method: 'POST', path: '/v1/connections' },
  connectionList: { method: 'GET', path: '/v1/connections' },
  connectionRemove: { method: 'DELETE', path: '/v1/connections/:name' },
  agentCreate: { method: 'POST', path: '/v1/agents' },
  agentList: { method: 'GET', path: '/v1/agents' },
  agentRevoke: { method: 'POST', path: '/v1/agents/:name/revoke' },
  tokenIssue: { method: 'POST', path: '/v1/tokens' },
  tokenNarrow: { method: 'POST', path: '/v1/tokens/narrow' },
  tokenInspect: { method: 'POST', path: '/v1/tokens/inspect' },
  tokenRevoke: { method: 'POST', path: '/v1/tokens/revoke' },
  tokenList: { method: 'GET', path: '/v1/tokens' },
  auditTail: { method: 'GET', path: '/v1/audit/tail' },
  auditExport: { method: 'GET', path: '/v1/audit/records' },
  auditVerify: { method: 'POST', path: '/v1/audit/verify' },
  auditAnchor: { method: 'GET', path: '/v1/audit/anchor' },
  backup: { method: 'POST', path: '/v1/backup' },
  sessionList: { method: 'GET', path: '/v1/sessions' },
  sessionShow: { method: 'GET', path: '/v1/sessions/:id' },
  sessionRecording: { method: 'GET', path: '/v1/sessions/:id/recording' },
  sessionExport: { method: 'GET', path: '/v1/sessions/:id/export' },
  sessionErase: { method: 'POST', path: '/v1/sessions/:id/erase' },
  recordingRetention: { method: 'POST', path: '/v1/recordings/retention' },
  keysRotate: { method: 'POST', path: '/v1/keys/rotate' },
  caExport: { method: 'GET', path: '/v1/ca' },
  agentEnv: { method: 'GET', path: '/v1/agents/:name/env' },
  approvalList: { method: 'GET', path: '/v1/approvals' },
  approvalShow: { method: 'GET', path: '/v1/approvals/:id' },
  approvalApprove: { method: 'POST', path: '/v1/approvals/:id/approve' },
  approvalDeny: { method: 'POST', path: '/v1/approvals/:id/deny' },
  workflowStart: { method: 'POST', path: '/v1/workflows' },
  workflowSpawn: { method: 'POST', path: '/v1/workflows/:parent/subtasks' },
  workflowEnd: { method: 'POST', path: '/v1/workflows/:id/end' },
  workflowRevoke: { method: 'POST', path: '/v1/workflows/:id/revoke' },
  workflowTokenize: { method: 'POST', path: '/v1/workflows/:id/tokenize' },
  workflowList: { method: 'GET', path: '/v1/workflows' },
  workflowShow: { method: 'GET', path: '/v1/workflows/:id' },
} as const satisfies Record<OperationName, { method: 'GET' | 'POST' | 'DELETE'; path: string }>;
