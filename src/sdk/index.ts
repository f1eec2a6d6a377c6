/**
 * coatcheck/sdk: run workflows and subtasks from TypeScript (docs/workflows.md).
 *
 * Two halves, both dependency-free (the global `fetch` of Node 20):
 * - an admin client (`createClient`) for the orchestrator: start a workflow, spawn and end
 *   subtasks, hand a subtask its environment, tokenize a prompt, show the audit tree;
 * - `createGatewayFetch` for the subtask itself: a `fetch` whose requests go through the
 *   gateway's HTTP front-end with the subtask's key, so tickets in them are exchanged there.
 *
 * Nothing here ever holds a secret: only tickets, keys and ids.
 */

export interface ClientOptions {
  /** The admin API, like `http://127.0.0.1:7070`. */
  readonly adminUrl: string;
  /** The admin key (`.coatcheck/admin.key`, or COATCHECK_ADMIN_KEY). */
  readonly adminKey: string;
  /** Replaces the global fetch (tests, proxies). */
  readonly fetch?: typeof fetch;
}

export type NodeStatus = 'active' | 'ended' | 'revoked' | 'expired';

export interface WorkflowInfo {
  readonly id: string;
  readonly name: string;
  readonly parentId: string | null;
  readonly rootId: string;
  /** The principal its tickets are bound to: `workflow:wfl_…` or `subtask:wfl_…`. */
  readonly principal: string;
  readonly startedBy: string;
  readonly groups: readonly string[];
  readonly status: NodeStatus;
  readonly expiresAt: string | null;
  readonly createdAt: string;
  readonly endedAt: string | null;
}

export interface NodeTicket {
  readonly ticket: string;
  readonly id: string;
  readonly secret: string;
  readonly envName: string;
  readonly destinations: readonly string[];
  readonly expiresAt: string | null;
  readonly maxUses: number | null;
}

/** A started workflow or a spawned subtask: its key and tickets are shown this once. */
export interface WorkflowNode {
  readonly workflow: WorkflowInfo;
  /** The node's credential at the gateway (`ccs_…`). */
  readonly key: string;
  readonly tickets: readonly NodeTicket[];
  /** COATCHECK_SUBTASK_KEY, COATCHECK_WORKFLOW, COATCHECK_SUBTASK, one variable per ticket, gateway/proxy URLs. */
  readonly env: Readonly<Record<string, string>>;
}

export interface StartOptions {
  readonly name: string;
  /** The agent the run is started for; its groups carry over to every subtask. */
  readonly agent: string;
  readonly secrets?: readonly string[];
  readonly destinations?: readonly string[];
  /** Like `15m`, `1h`. */
  readonly ttl?: string;
}

export interface SpawnOptions {
  readonly name: string;
  /** Default: every secret the parent holds. */
  readonly secrets?: readonly string[];
  readonly destinations?: readonly string[];
  /** Deadline from now, no later than the parent's. */
  readonly ttl?: string;
  /** Most exchanges per ticket. */
  readonly uses?: number;
}

export interface EndResult {
  readonly id: string;
  /** Nodes ended (or revoked) by this call. */
  readonly ended: readonly string[];
  readonly tickets: readonly string[];
}

export interface TicketInfo {
  readonly id: string;
  readonly secretId: string;
  readonly secret: string | null;
  readonly principal: string;
  readonly destinations: readonly string[];
  readonly expiresAt: string | null;
  readonly maxUses: number | null;
  readonly uses: number;
  readonly parentId: string | null;
  readonly createdAt: string;
  readonly revokedAt: string | null;
  readonly status: 'active' | 'revoked' | 'expired' | 'exhausted' | 'erased';
}

export interface WorkflowEvent {
  readonly seq: number;
  readonly at: string;
  readonly kind: 'exchange' | 'refused' | 'credential' | 'denied' | 'reissued';
  readonly ticket: string | null;
  readonly secret: string | null;
  readonly target: string | null;
  readonly operation: string | null;
  readonly code: string | null;
  readonly ticketOwner: string | null;
  readonly actor: string;
}

export interface WorkflowTreeNode extends WorkflowInfo {
  readonly depth: number;
  readonly tickets: readonly TicketInfo[];
  readonly events: readonly WorkflowEvent[];
}

export interface WorkflowTree {
  readonly root: WorkflowInfo;
  readonly nodes: readonly WorkflowTreeNode[];
}

export interface TokenizedPrompt {
  /** The text with every secret found replaced by a ticket. */
  readonly text: string;
  readonly tickets: ReadonlyArray<{ readonly id: string; readonly rule: string }>;
}

/** An error the gateway answered with: match on `code` (docs/errors.md), never on the message. */
export class CoatcheckError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: string, message: string, status: number, details?: Record<string, unknown>) {
    super(message);
    this.name = 'CoatcheckError';
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

export interface CoatcheckClient {
  startWorkflow(options: StartOptions): Promise<WorkflowNode>;
  /** Spawn a subtask under a workflow or another subtask (`parentId`). */
  spawnSubtask(parentId: string, options: SpawnOptions): Promise<WorkflowNode>;
  /** End a workflow or subtask and everything under it. */
  end(id: string): Promise<EndResult>;
  /** Revoke a workflow or subtask and everything under it. */
  revoke(id: string): Promise<EndResult>;
  /** The tree under a node: tickets, exchanges, refusals (from the audit log). */
  show(id: string): Promise<WorkflowTree>;
  /** Replace secrets in a prompt with tickets bound to the node, releasable only to `destinations`. */
  tokenizePrompt(
    id: string,
    text: string,
    options?: { readonly destinations?: readonly string[] },
  ): Promise<TokenizedPrompt>;
}

async function call<T>(
  options: ClientOptions,
  method: 'GET' | 'POST',
  path: string,
  body?: Record<string, unknown>,
): Promise<T> {
  const doFetch = options.fetch ?? fetch;
  let response: Response;
  try {
    response = await doFetch(new URL(path, options.adminUrl), {
      method,
      headers: { authorization: `Bearer ${options.adminKey}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (cause) {
    throw Object.assign(
      new CoatcheckError(
        'CC_ERR_SERVER_UNREACHABLE',
        `the admin API at ${options.adminUrl} does not answer`,
        0,
      ),
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
      `the admin API answered ${response.status} without JSON`,
      response.status,
    );
  }
  if (!response.ok) {
    const error = (
      parsed as { error?: { code?: string; message?: string; details?: Record<string, unknown> } }
    ).error;
    throw new CoatcheckError(
      error?.code ?? 'CC_ERR_INTERNAL',
      error?.message ?? `the admin API answered ${response.status}`,
      response.status,
      error?.details,
    );
  }
  return parsed as T;
}

const segment = (id: string) => encodeURIComponent(id);

/** A client of the admin API, for the process that orchestrates a workflow. */
export function createClient(options: ClientOptions): CoatcheckClient {
  return {
    startWorkflow: (o) =>
      call(options, 'POST', '/v1/workflows', {
        name: o.name,
        agent: o.agent,
        secrets: o.secrets,
        destinations: o.destinations,
        ttl: o.ttl,
      }),
    spawnSubtask: (parentId, o) =>
      call(options, 'POST', `/v1/workflows/${segment(parentId)}/subtasks`, {
        name: o.name,
        secrets: o.secrets,
        destinations: o.destinations,
        ttl: o.ttl,
        uses: o.uses,
      }),
    end: (id) => call(options, 'POST', `/v1/workflows/${segment(id)}/end`, {}),
    revoke: (id) => call(options, 'POST', `/v1/workflows/${segment(id)}/revoke`, {}),
    show: (id) => call(options, 'GET', `/v1/workflows/${segment(id)}`),
    tokenizePrompt: (id, text, o = {}) =>
      call(options, 'POST', `/v1/workflows/${segment(id)}/tokenize`, { text, destinations: o.destinations }),
  };
}

/**
 * The environment for a subtask's child process or container: the current environment
 * (unless `inherit: false`) plus the node's variables. Pass it as `env` to
 * `child_process.spawn`, or write it as an env file.
 */
export function subtaskEnv(
  node: Pick<WorkflowNode, 'env'>,
  options: { readonly inherit?: boolean; readonly base?: NodeJS.ProcessEnv } = {},
): NodeJS.ProcessEnv {
  const base = options.inherit === false ? {} : (options.base ?? process.env);
  return { ...base, ...node.env };
}

/** `KEY=VALUE` lines, as `coatcheck workflow spawn` prints them (for `docker run --env-file`). */
export function envFile(node: Pick<WorkflowNode, 'env'>): string {
  return Object.entries(node.env)
    .map(([key, value]) => `${key}=${value}\n`)
    .join('');
}

export interface GatewayFetchOptions {
  /** The HTTP front-end (`COATCHECK_GATEWAY_URL`). */
  readonly gatewayUrl?: string;
  /** The subtask key (`COATCHECK_SUBTASK_KEY`), an agent key, or an OIDC JWT. */
  readonly credential?: string;
  /** Default connection for relative paths. */
  readonly connection?: string;
  readonly fetch?: typeof fetch;
}

export type GatewayFetch = (
  /** `<connection>/<path>` (or `/<path>` with a default connection), or a full gateway URL. */
  path: string,
  init?: RequestInit,
) => Promise<Response>;

/**
 * A `fetch` through the gateway: `gatewayFetch('users/v1/users')` requests
 * `<gateway>/c/users/v1/users` with `Proxy-Authorization: Bearer <credential>`. Put
 * tickets where the secrets would go (headers, query, body); the gateway exchanges them.
 * Defaults come from the environment `workflow spawn` hands a subtask.
 */
export function createGatewayFetch(options: GatewayFetchOptions = {}): GatewayFetch {
  const gatewayUrl = options.gatewayUrl ?? process.env.COATCHECK_GATEWAY_URL;
  const credential = options.credential ?? process.env.COATCHECK_SUBTASK_KEY;
  if (gatewayUrl === undefined || gatewayUrl === '') {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', 'no gatewayUrl (or COATCHECK_GATEWAY_URL)', 0);
  }
  if (credential === undefined || credential === '') {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', 'no credential (or COATCHECK_SUBTASK_KEY)', 0);
  }
  const base = new URL(gatewayUrl);
  const doFetch = options.fetch ?? fetch;
  return (path, init = {}) => {
    let url: URL;
    if (/^https?:\/\//i.test(path)) {
      url = new URL(path);
      if (url.origin !== base.origin) {
        // The credential is for the gateway only: never send it anywhere else.
        return Promise.reject(
          new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `${url.origin} is not the gateway`, 0),
        );
      }
    } else {
      const rest = path.replace(/^\/+/, '');
      const full = options.connection === undefined ? rest : `${options.connection}/${rest}`;
      url = new URL(`/c/${full}`, base);
    }
    const headers = new Headers(init.headers);
    headers.set('proxy-authorization', `Bearer ${credential}`);
    return doFetch(url, { ...init, headers });
  };
}
