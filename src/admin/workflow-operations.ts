import * as z from 'zod';
import { parseDuration } from '../core/duration.js';
import { CoatcheckError } from '../core/errors.js';
import { agentRef } from '../core/principal.js';
import type { Context } from '../server/context.js';
import { lazyInput, type Operation, type OperationDefinition } from './operations.js';

/**
 * Workflow and subtask operations (docs/workflows.md), part of the one operations table
 * (src/admin/operations.ts): the CLI, the admin API, the OpenAPI document and the SDK
 * (src/sdk/) all reach them from there.
 */
function op<I extends z.ZodType, O>(definition: OperationDefinition<I, O>): Operation<I, O> {
  return lazyInput(definition);
}

const name = z.string().min(1).max(128);
const nodeId = z.string().min(1).max(64);
const secrets = z.array(name).max(64).optional();
const destinations = z.array(z.string().min(1).max(260)).max(64).optional();
const duration = z
  .string()
  .max(16)
  .optional()
  .transform((text, context) => {
    if (text === undefined) return undefined;
    try {
      return parseDuration(text, 'ttl');
    } catch {
      context.addIssue({ code: 'custom', message: 'must look like 90s, 15m, 8h or 7d' });
      return z.NEVER;
    }
  });

export const workflowOperations = {
  workflowStart: op({
    method: 'POST',
    path: '/v1/workflows',
    summary:
      'Start a workflow run for an agent; the response carries its key and tickets (shown this once) and an environment.',
    input: () => z.object({ name, agent: name, secrets, destinations, ttl: duration }),
    async run(ctx: Context, input, actor) {
      const agent = await ctx.agents.get(input.agent);
      if (agent.status !== 'active') {
        throw new CoatcheckError(
          agent.status === 'revoked' ? 'CC_ERR_AGENT_REVOKED' : 'CC_ERR_AGENT_EXPIRED',
          `agent ${input.agent} is ${agent.status}`,
          { details: { agent: agent.id } },
        );
      }
      return ctx.workflows.start(
        {
          name: input.name,
          principal: agentRef(agent.id),
          groups: agent.groups,
          secrets: input.secrets ?? [],
          destinations: input.destinations,
          ttlMs: input.ttl,
        },
        actor,
      );
    },
  }),
  workflowSpawn: op({
    method: 'POST',
    path: '/v1/workflows/:parent/subtasks',
    summary:
      "Spawn a subtask under a workflow or subtask, with tickets narrowed from its parent's; the response carries its key, tickets and environment.",
    input: () =>
      z.object({
        parent: nodeId,
        name,
        secrets,
        destinations,
        ttl: duration,
        uses: z.number().int().min(1).max(1_000_000_000).optional(),
      }),
    run: (ctx: Context, input, actor) =>
      ctx.workflows.spawn(
        {
          parent: input.parent,
          name: input.name,
          secrets: input.secrets,
          destinations: input.destinations,
          ttlMs: input.ttl,
          maxUses: input.uses,
        },
        actor,
      ),
  }),
  workflowEnd: op({
    method: 'POST',
    path: '/v1/workflows/:id/end',
    summary: 'End a workflow or subtask and everything under it: keys stop working, tickets expire now.',
    input: () => z.object({ id: nodeId }),
    run: (ctx: Context, input, actor) => ctx.workflows.end(input.id, actor),
  }),
  workflowRevoke: op({
    method: 'POST',
    path: '/v1/workflows/:id/revoke',
    summary: 'Revoke a workflow or subtask and everything under it: keys and tickets are revoked.',
    input: () => z.object({ id: nodeId }),
    run: (ctx: Context, input, actor) => ctx.workflows.revoke(input.id, actor),
  }),
  workflowTokenize: op({
    method: 'POST',
    path: '/v1/workflows/:id/tokenize',
    summary:
      'Replace every secret found in a text (a prompt) with a ticket bound to the workflow node, releasable only to its destinations.',
    input: () =>
      z.object({
        id: nodeId,
        text: z.string().max(1024 * 1024),
        destinations,
      }),
    async run(ctx: Context, input, actor) {
      const node = await ctx.workflows.get(input.id);
      if (node.status !== 'active') {
        throw new CoatcheckError('CC_ERR_WORKFLOW_INACTIVE', `workflow node ${node.id} is ${node.status}`, {
          details: { id: node.id, status: node.status },
        });
      }
      // Loaded here, not at the top: the remote CLI imports this module for its schemas.
      const [{ tokenizeText }, { cleaningDetector }] = await Promise.all([
        import('../detect/index.js'),
        import('./text-clean.js'),
      ]);
      // Every secret rule plus the vault's live secrets, from the shared index (no rebuild per call).
      const detector = await cleaningDetector(ctx, false);
      const context = { workflow: node.rootId, subtask: node.id, source: 'prompt' };
      const tickets: Array<{ id: string; rule: string }> = [];
      const result = await tokenizeText(
        input.text,
        async (finding, value) => {
          const issued =
            finding.secretId !== undefined
              ? await ctx.vault.reissueForResponse(
                  finding.secretId,
                  {
                    principal: node.principal,
                    ...(input.destinations === undefined ? {} : { destinations: input.destinations }),
                    context,
                    operator: true,
                  },
                  actor,
                )
              : await ctx.vault.tokenizeFound(
                  Buffer.from(value, 'utf8'),
                  {
                    principal: node.principal,
                    destinations: input.destinations ?? [],
                    kind: finding.ruleId,
                    source: 'prompt',
                    operator: true,
                  },
                  actor,
                );
          tickets.push({ id: issued.view.id, rule: finding.ruleId });
          return issued.ticket;
        },
        { detector },
      );
      return { text: result.text, tickets };
    },
  }),
  workflowList: op({
    method: 'GET',
    path: '/v1/workflows',
    summary: 'Workflow runs (their root nodes), newest first, with their status.',
    input: () => z.object({ limit: z.number().int().min(1).max(500).optional() }),
    run: (ctx: Context, input) => ctx.workflows.list(input.limit),
  }),
  workflowShow: op({
    method: 'GET',
    path: '/v1/workflows/:id',
    summary:
      'A workflow or subtask and the tree under it: tickets, and which node exchanged which secret, where and when, and what was refused.',
    input: () => z.object({ id: nodeId }),
    run: (ctx: Context, input) => ctx.workflows.show(input.id),
  }),
} as const;
