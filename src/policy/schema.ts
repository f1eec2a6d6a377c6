/**
 * The Cedar schema every policy is validated against at load. Entity and action names
 * are part of the public contract (docs/policy.md); add, never rename.
 */
export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
export const SQL_ACTIONS = [
  'sql:read',
  'sql:write',
  'sql:ddl',
  'sql:privilege',
  'sql:session',
  'sql:call',
] as const;

/** Kubernetes API verbs (the Kubernetes front-end's `k8s:<verb>`), and impersonation decided on its own. */
export const K8S_ACTIONS = [
  'k8s:get',
  'k8s:list',
  'k8s:watch',
  'k8s:create',
  'k8s:update',
  'k8s:patch',
  'k8s:delete',
  'k8s:deletecollection',
  'k8s:exec',
  'k8s:attach',
  'k8s:portforward',
  'k8s:proxy',
  'k8s:impersonate',
] as const;
/** SSH front-end: a command (parsed), a raw command line, a shell, the sftp subsystem, a local port forward. */
export const SSH_ACTIONS = ['ssh:exec', 'ssh:exec-raw', 'ssh:shell', 'ssh:sftp', 'ssh:forward'] as const;

export const ACTIONS = [
  'exchange',
  ...HTTP_METHODS.map((m) => `http:${m}`),
  ...SQL_ACTIONS,
  ...SSH_ACTIONS,
  'mcp:call',
  'llm:call',
  ...K8S_ACTIONS,
] as const;

const principals = '[Agent, Human, Subtask]';

export const CEDAR_SCHEMA = `
entity Group;
entity Agent in [Group] { name: String };
entity Human in [Group] { name: String };
entity Workflow;
entity Subtask in [Workflow] { name: String };
entity Connection { type: String };
entity Secret { kind: String };

type RequestContext = {
  hour: Long,
  weekday: String,
  source_ip?: String,
  statement?: String,
  sql_class?: String,
  sql_kind?: String,
  tables?: Set<String>,
  functions?: Set<String>,
  method?: String,
  path?: String,
  host?: String,
  workflow?: String,
  subtask?: String,
  tool?: String,
  verb?: String,
  api_group?: String,
  resource?: String,
  subresource?: String,
  namespace?: String,
  name?: String,
  impersonate_user?: String,
  impersonate_groups?: String,
  command?: String,
  program?: String,
  args?: Set<String>,
  target_host?: String,
  target_port?: Long,
};

action "exchange" appliesTo { principal: ${principals}, resource: [Secret, Connection], context: RequestContext };
action ${HTTP_METHODS.map((m) => `"http:${m}"`).join(', ')} appliesTo { principal: ${principals}, resource: [Connection], context: RequestContext };
action ${SQL_ACTIONS.map((a) => `"${a}"`).join(', ')} appliesTo { principal: ${principals}, resource: [Connection], context: RequestContext };
action ${SSH_ACTIONS.map((a) => `"${a}"`).join(', ')} appliesTo { principal: ${principals}, resource: [Connection], context: RequestContext };
action "mcp:call", "llm:call" appliesTo { principal: ${principals}, resource: [Connection], context: RequestContext };
action ${K8S_ACTIONS.map((a) => `"${a}"`).join(', ')} appliesTo { principal: ${principals}, resource: [Connection], context: RequestContext };
`;

/** Used when no policy is configured: a valid ticket, bound to the caller and the destination, is enough. */
export const BUILTIN_POLICY_ID = 'builtin:allow-valid-tickets';
export const BUILTIN_POLICY = 'permit(principal, action, resource);';
