import * as z from 'zod';
import { connectionRulesSchema } from '../config/connection-rules.js';
import { CONNECTION_TYPES } from '../config/defaults.js';
import { parseDuration } from '../core/duration.js';
import { CoatcheckError } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import { agentRef } from '../core/principal.js';
import type { RecordingArchive } from '../recording/archive.js';
import type { Context } from '../server/context.js';
import type { RecordingRecord } from '../store/types.js';
import { readKeyringState } from '../vault/keyring.js';
// The remote CLI loads this module for its input schemas: handlers import what only the
// server runs (backup, rotation, text cleaning, the proxy CA) when they run.
import { workflowOperations } from './workflow-operations.js';

/**
 * Every admin operation, defined once. The admin HTTP API serves them, the CLI calls
 * them (through the API when a server runs, in process when not), and the OpenAPI
 * document is generated from them. Inputs are validated here, whichever way they came.
 */
export interface Operation<I extends z.ZodType, O> {
  readonly method: 'GET' | 'POST' | 'DELETE';
  /** Path with `:field` placeholders taken from the input. */
  readonly path: string;
  readonly summary: string;
  readonly input: I;
  /** Runs only where the store is open: in `serve`, or in the CLI without a server. */
  /** `principal`: the human behind a console session, when the caller is not the admin key. */
  run(ctx: Context, input: z.infer<I>, actor: string, principal?: Principal | null): Promise<O>;
}

/** An operation as written below: its input schema is built on first use. */
export type OperationDefinition<I extends z.ZodType, O> = Omit<Operation<I, O>, 'input'> & { input: () => I };

/**
 * Building the ~50 input schemas is a good part of a short command's start (zod objects are
 * costly to construct), and a command uses one: each is built when first read.
 */
export function lazyInput<I extends z.ZodType, O>(definition: OperationDefinition<I, O>): Operation<I, O> {
  const build = definition.input;
  let schema: I | undefined;
  return {
    ...definition,
    get input(): I {
      schema ??= build();
      return schema;
    },
  };
}

function op<I extends z.ZodType, O>(definition: OperationDefinition<I, O>): Operation<I, O> {
  return lazyInput(definition);
}

const name = z.string().min(1).max(128);
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
const destinations = z.array(z.string().min(1).max(260)).max(64).optional();
const ticketOrId = z.string().min(1).max(64);
const placementList = z.array(z.string().min(1).max(80)).max(16).optional();
const sqlConnections = z.array(z.string().min(1).max(63)).max(64).optional();

export function retentionLimits(ctx: Context): { maxAgeMs: number; maxBytes: number } {
  return {
    maxAgeMs: parseDuration(ctx.config.recording.retention.maxAge, 'recording.retention.maxAge'),
    maxBytes: ctx.config.recording.retention.maxBytes,
  };
}

/** Most recordings whose events a text search decrypts per call. */
const MAX_TEXT_SEARCHED = 500;

/** Full recordings matching the filters; with `text`, only those whose events contain it. */
async function searchRecordings(
  ctx: Context,
  archive: RecordingArchive,
  input: {
    principal?: string;
    connection?: string;
    ticket?: string;
    since?: number;
    until?: number;
    before?: number;
    text?: string;
    limit: number;
  },
): Promise<RecordingRecord[]> {
  let ticket = input.ticket;
  if (ticket !== undefined && !/^tkt_[0-9A-Za-z]{1,60}$/.test(ticket)) {
    // The ticket itself: its id (the list holds ids, never tickets).
    ticket = (await ctx.vault.inspectTicket(ticket)).id;
  }
  const until =
    input.before === undefined ? input.until : Math.min(input.before, input.until ?? Number.MAX_SAFE_INTEGER);
  const candidates = await ctx.store.listRecordings({
    limit: input.text === undefined ? input.limit : MAX_TEXT_SEARCHED,
    ...(input.principal === undefined ? {} : { principal: input.principal }),
    ...(input.connection === undefined ? {} : { connection: input.connection }),
    ...(ticket === undefined ? {} : { ticket }),
    ...(input.since === undefined ? {} : { since: input.since }),
    ...(until === undefined ? {} : { until }),
  });
  if (input.text === undefined) return candidates;
  const { loadRecording } = await import('../recording/archive.js');
  const needle = input.text.toLowerCase();
  const found: RecordingRecord[] = [];
  for (const candidate of candidates) {
    if (found.length >= input.limit) break;
    if (candidate.erasedAt !== null) continue;
    try {
      const { events } = await loadRecording(archive, candidate.id);
      if (events.some((event) => JSON.stringify(event.data).toLowerCase().includes(needle)))
        found.push(candidate);
    } catch {
      // unreadable recordings are reported by `audit verify`, not here
    }
  }
  return found;
}

async function principalOf(ctx: Context, agentName: string): Promise<string> {
  const agent = await ctx.agents.get(agentName);
  if (agent.status !== 'active') {
    throw new CoatcheckError(
      agent.status === 'revoked' ? 'CC_ERR_AGENT_REVOKED' : 'CC_ERR_AGENT_EXPIRED',
      `agent ${agentName} is ${agent.status}`,
      {
        details: { agent: agent.id },
      },
    );
  }
  return agentRef(agent.id);
}

/**
 * The approver behind an admin-key request. The admin key is fully trusted, so it may act
 * as a named human with named groups (`--as`, `--group`); the record keeps who did.
 */
function approverOf(
  as: string | undefined,
  groups: readonly string[] | undefined,
  actor: string,
  principal?: Principal | null,
) {
  // A human signed in at the console approves as themselves, with the groups their token carries.
  if (principal !== undefined && principal !== null && principal.kind === 'oidc') {
    return { ref: principal.ref, name: principal.name, groups: principal.groups };
  }
  const name = as ?? actor;
  return { ref: `human:${name}`, name, groups: groups ?? [] };
}

export const operations = {
  status: op({
    method: 'GET',
    path: '/v1/status',
    summary: 'Gateway status: store, master key id, audit head.',
    input: () => z.object({}),
    async run(ctx) {
      const head = await ctx.store.auditHead();
      const keyring = await readKeyringState(ctx.store);
      return {
        store: ctx.store.driver,
        location: ctx.store.location,
        masterKey: keyring.active,
        // What an operator checks on each replica before activating a new key.
        keyring: { ...keyring, loaded: ctx.keys.masters.kids.sort() },
        auditHead: head?.seq ?? 0,
      };
    },
  }),

  secretAdd: op({
    method: 'POST',
    path: '/v1/secrets',
    summary: 'Store a secret (value base64-encoded in the body; never echoed).',
    input: () =>
      z.object({
        name,
        valueBase64: z
          .string()
          .max(100_000)
          .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64'),
        kind: z.string().min(1).max(64).optional(),
        allow: destinations,
        /** Placements beyond credential: header, query, body, path. */
        placements: placementList,
        /** Connections whose SQL may carry the secret. */
        allowSql: sqlConnections,
        allowPlaintext: z.boolean().optional(),
      }),
    run: (ctx, input, actor) =>
      ctx.vault.addSecret(
        {
          name: input.name,
          value: Buffer.from(input.valueBase64, 'base64'),
          kind: input.kind,
          allow: input.allow ?? [],
          ...(input.placements === undefined ? {} : { placements: input.placements }),
          ...(input.allowSql === undefined ? {} : { allowSql: input.allowSql }),
          allowPlaintext: input.allowPlaintext ?? false,
        },
        actor,
      ),
  }),
  secretUpdate: op({
    method: 'POST',
    path: '/v1/secrets/:name/bindings',
    summary:
      "Change a secret's destinations (replaced when given) and placements (replaced when placements or allowSql is given).",
    input: () =>
      z.object({
        name,
        allow: destinations,
        placements: placementList,
        allowSql: sqlConnections,
        allowPlaintext: z.boolean().optional(),
      }),
    run: (ctx, input, actor) =>
      ctx.vault.updateSecret(
        input.name,
        {
          ...(input.allow === undefined ? {} : { allow: input.allow }),
          ...(input.placements === undefined ? {} : { placements: input.placements }),
          ...(input.allowSql === undefined ? {} : { allowSql: input.allowSql }),
          allowPlaintext: input.allowPlaintext ?? false,
        },
        actor,
      ),
  }),
  secretTokenize: op({
    method: 'POST',
    path: '/v1/secrets/tokenize',
    summary:
      'Register a secret found in text and return a ticket for it, bound to an agent (value base64 in the body).',
    input: () =>
      z.object({
        valueBase64: z
          .string()
          .min(1)
          .max(100_000)
          .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64'),
        kind: z.string().min(1).max(64),
        to: name,
        destinations: destinations,
        source: z.string().max(64).optional(),
      }),
    async run(ctx, input, actor) {
      const principal = await principalOf(ctx, input.to);
      const issued = await ctx.vault.tokenizeFound(
        Buffer.from(input.valueBase64, 'base64'),
        {
          principal,
          destinations: input.destinations ?? [],
          kind: input.kind,
          source: input.source ?? 'cli',
          operator: true,
        },
        actor,
      );
      return { ticket: issued.ticket, id: issued.view.id, secretId: issued.view.secretId };
    },
  }),
  textClean: op({
    method: 'POST',
    path: '/v1/text/clean',
    summary:
      'Clean a text with the detector the gateway uses (every rule and every vault secret): mask each finding, or replace it with a ticket bound to an agent. Returns the cleaned text, never a value.',
    input: () =>
      z.object({
        text: z.string().max(1024 * 1024),
        mode: z.enum(['mask', 'tokenize']),
        lines: z.boolean().optional(),
        pii: z.boolean().optional(),
        to: name.optional(),
        destinations: destinations,
        source: z.enum(['scrub', 'tokenize']).optional(),
      }),
    async run(ctx, input, actor) {
      if (input.mode === 'tokenize' && input.to === undefined) {
        throw new CoatcheckError(
          'CC_ERR_INVALID_ARGUMENT',
          'tokenizing needs an agent (to): every ticket is bound to an agent',
          { details: { field: 'to' } },
        );
      }
      const principal =
        input.mode === 'tokenize' && input.to !== undefined ? await principalOf(ctx, input.to) : undefined;
      const { cleanText } = await import('./text-clean.js');
      return cleanText(
        ctx,
        {
          text: input.text,
          mode: input.mode,
          lines: input.lines ?? false,
          pii: input.pii ?? false,
          ...(principal === undefined ? {} : { principal }),
          ...(input.destinations === undefined ? {} : { destinations: input.destinations }),
          source: input.source ?? 'cli',
        },
        actor,
      );
    },
  }),
  secretList: op({
    method: 'GET',
    path: '/v1/secrets',
    summary: 'List secrets (metadata and fingerprints only).',
    input: () => z.object({}),
    run: (ctx) => ctx.vault.listSecrets(),
  }),
  secretRemove: op({
    method: 'DELETE',
    path: '/v1/secrets/:name',
    summary: 'Erase a secret: its data key is destroyed and every ticket for it stops working.',
    input: () => z.object({ name, force: z.boolean().optional() }),
    run: (ctx, input, actor) => ctx.vault.removeSecret(input.name, actor, { force: input.force ?? false }),
  }),

  connectionAdd: op({
    method: 'POST',
    path: '/v1/connections',
    summary: 'Register a connection (a named target and the credential the gateway injects).',
    input: () =>
      z.object({
        name,
        type: z.enum(CONNECTION_TYPES),
        url: z.string().min(1).max(2048),
        credential: z.string().min(1).max(128).optional(),
        injectHeaders: z.record(z.string().max(256), z.string().max(4096)).optional(),
        rules: connectionRulesSchema.optional(),
        via: z
          .string()
          .regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/)
          .optional(),
      }),
    run: (ctx, input, actor) => ctx.connections.add(input, actor),
  }),
  connectionList: op({
    method: 'GET',
    path: '/v1/connections',
    summary: 'List connections from the config file and the store.',
    input: () => z.object({}),
    run: (ctx) => ctx.connections.list(),
  }),
  connectionRemove: op({
    method: 'DELETE',
    path: '/v1/connections/:name',
    summary: 'Remove a connection added with `connection add`.',
    input: () => z.object({ name }),
    async run(ctx, input, actor) {
      await ctx.connections.remove(input.name, actor);
      return { name: input.name, removed: true };
    },
  }),

  agentCreate: op({
    method: 'POST',
    path: '/v1/agents',
    summary: 'Create an agent; the response carries its key, shown this once.',
    input: () => z.object({ name, groups: z.array(z.string().max(64)).max(64).optional(), ttl: duration }),
    run: (ctx, input, actor) =>
      ctx.agents.create({ name: input.name, groups: input.groups, ttlMs: input.ttl }, actor),
  }),
  agentList: op({
    method: 'GET',
    path: '/v1/agents',
    summary: 'List agents.',
    input: () => z.object({}),
    run: (ctx) => ctx.agents.list(),
  }),
  agentRevoke: op({
    method: 'POST',
    path: '/v1/agents/:name/revoke',
    summary: 'Revoke an agent: its key stops working at once.',
    input: () => z.object({ name }),
    run: (ctx, input, actor) => ctx.agents.revoke(input.name, actor),
  }),

  relayCreate: op({
    method: 'POST',
    path: '/v1/relays',
    summary: 'Create a relay (docs/relay.md); the response carries its key, shown this once.',
    input: () => z.object({ name }),
    run: (ctx, input, actor) => ctx.relays.create(input.name, actor),
  }),
  relayList: op({
    method: 'GET',
    path: '/v1/relays',
    summary: 'List relays with their status and when they were last seen.',
    input: () => z.object({}),
    run: (ctx) => ctx.relays.list(),
  }),
  relayRevoke: op({
    method: 'POST',
    path: '/v1/relays/:name/revoke',
    summary: 'Revoke a relay: its sessions are dropped at once and its key is refused.',
    input: () => z.object({ name }),
    run: (ctx, input, actor) => ctx.relays.revoke(input.name, actor),
  }),
  agentSshKeyAdd: op({
    method: 'POST',
    path: '/v1/agents/:name/ssh-keys',
    summary:
      'Register an SSH public key (one OpenSSH key line) to an agent: it logs in to the SSH front-end with it (a ticket for the connection is still what grants it).',
    input: () =>
      z.object({
        name,
        publicKey: z
          .string()
          .min(1)
          .max(16 * 1024),
      }),
    run: (ctx, input, actor) => ctx.agents.addSshKey(input.name, input.publicKey, actor),
  }),
  agentSshKeyList: op({
    method: 'GET',
    path: '/v1/agents/:name/ssh-keys',
    summary: "List an agent's SSH keys (fingerprints, never more than the public key).",
    input: () => z.object({ name, all: z.boolean().optional() }),
    run: (ctx, input) => ctx.agents.listSshKeys(input.name, input.all ?? false),
  }),
  agentSshKeyRemove: op({
    method: 'DELETE',
    path: '/v1/agents/:name/ssh-keys/:key',
    summary: "Remove an agent's SSH key (by SHA256 fingerprint or id); its live SSH sessions end.",
    input: () => z.object({ name, key: z.string().min(1).max(128) }),
    run: (ctx, input, actor) => ctx.agents.removeSshKey(input.name, input.key, actor),
  }),

  tokenIssue: op({
    method: 'POST',
    path: '/v1/tokens',
    summary: 'Issue a ticket for a secret, bound to an agent; the response carries the ticket.',
    input: () =>
      z.object({
        secret: name,
        to: name,
        destinations,
        ttl: duration,
        uses: z.number().int().min(1).max(1_000_000_000).optional(),
      }),
    async run(ctx, input, actor) {
      const principal = await principalOf(ctx, input.to);
      return ctx.vault.issueTicket(
        {
          secret: input.secret,
          principal,
          destinations: input.destinations,
          ttlMs: input.ttl,
          maxUses: input.uses,
        },
        actor,
      );
    },
  }),
  tokenNarrow: op({
    method: 'POST',
    path: '/v1/tokens/narrow',
    summary: 'Derive a narrower child ticket from a ticket.',
    input: () =>
      z.object({
        ticket: ticketOrId,
        destinations,
        ttl: duration,
        uses: z.number().int().min(1).max(1_000_000_000).optional(),
      }),
    run: (ctx, input, actor) =>
      ctx.vault.narrowTicket(
        input.ticket,
        { destinations: input.destinations, ttlMs: input.ttl, maxUses: input.uses },
        actor,
      ),
  }),
  tokenInspect: op({
    method: 'POST',
    path: '/v1/tokens/inspect',
    summary: "Show a ticket's scope and status (by ticket or id; POST keeps tickets out of URLs).",
    input: () => z.object({ ticket: ticketOrId }),
    run: (ctx, input) => ctx.vault.inspectTicket(input.ticket),
  }),
  tokenRevoke: op({
    method: 'POST',
    path: '/v1/tokens/revoke',
    summary: 'Revoke a ticket (by ticket or id) and all tickets narrowed from it.',
    input: () => z.object({ ticket: ticketOrId }),
    run: (ctx, input, actor) => ctx.vault.revokeTicket(input.ticket, actor),
  }),
  tokenList: op({
    method: 'GET',
    path: '/v1/tokens',
    summary: 'List tickets (active only unless all=true).',
    input: () => z.object({ secret: name.optional(), agent: name.optional(), all: z.boolean().optional() }),
    async run(ctx, input) {
      const principal =
        input.agent === undefined ? undefined : agentRef((await ctx.agents.get(input.agent)).id);
      return ctx.vault.listTickets({ secret: input.secret, principal, all: input.all });
    },
  }),

  auditTail: op({
    method: 'GET',
    path: '/v1/audit/tail',
    summary: 'The last N audit records.',
    input: () => z.object({ limit: z.number().int().min(1).max(10_000).optional() }),
    run: (ctx, input) => ctx.audit.tail(input.limit ?? 20),
  }),
  auditExport: op({
    method: 'GET',
    path: '/v1/audit/records',
    summary: 'Audit records after a sequence number, in order (page through with after).',
    input: () =>
      z.object({
        after: z.number().int().min(0).optional(),
        limit: z.number().int().min(1).max(10_000).optional(),
      }),
    run: (ctx, input) => ctx.store.readAudit(input.after ?? 0, input.limit ?? 1000),
  }),
  auditVerify: op({
    method: 'POST',
    path: '/v1/audit/verify',
    summary:
      'Verify the audit hash chain; reports the first bad record. With an anchor (a head kept outside the store), also proves the log reaches it.',
    input: () =>
      z.object({
        anchor: z.object({ seq: z.number().int().min(0), hash: z.string().max(128) }).optional(),
      }),
    async run(ctx, input) {
      const chain = await ctx.audit.verify(input.anchor === undefined ? {} : { anchor: input.anchor });
      // Each recording's chained hash is in the log (recording.sealed): an edited or removed one shows here.
      const { recordingArchive } = await import('../server/recordings.js');
      const { verifyRecordings } = await import('../recording/archive.js');
      return { ...chain, recordings: await verifyRecordings(recordingArchive(ctx)) };
    },
  }),
  auditAnchor: op({
    method: 'GET',
    path: '/v1/audit/anchor',
    summary: 'The current audit head (seq and hash), to keep outside the store as an anchor.',
    input: () => z.object({}),
    run: (ctx) => ctx.audit.anchor(),
  }),
  backup: op({
    method: 'POST',
    path: '/v1/backup',
    summary:
      'Write a consistent copy of the SQLite store to a new file on the server, with an anchor file (audit head, master key id).',
    input: () => z.object({ path: z.string().min(1).max(4096) }),
    async run(ctx, input) {
      const { backupStore } = await import('./backup.js');
      return backupStore(ctx, input.path);
    },
  }),

  sessionList: op({
    method: 'GET',
    path: '/v1/sessions',
    summary:
      'Recorded data-path sessions, newest first (page back with before). Filtering by connection, ticket, time or text lists full recordings only; text is searched in their decrypted events (statements, URLs, bodies).',
    input: () =>
      z.object({
        limit: z.number().int().min(1).max(1000).optional(),
        before: z.number().int().min(0).optional(),
        agent: name.optional(),
        // Coerced: the admin API reads an all-digit query value as a number (a connection
        // named 2024, a search for 404).
        connection: z.coerce.string().min(1).max(128).optional(),
        /** A ticket id (tkt_…) or the ticket itself. */
        ticket: z.coerce.string().min(1).max(64).optional(),
        since: z.number().int().min(0).optional(),
        until: z.number().int().min(0).optional(),
        text: z.coerce.string().min(1).max(1024).optional(),
      }),
    async run(ctx, input) {
      const principal =
        input.agent === undefined ? undefined : agentRef((await ctx.agents.get(input.agent)).id);
      const limit = input.limit ?? 50;
      const { recordingArchive } = await import('../server/recordings.js');
      const archive = recordingArchive(ctx);
      const searching =
        input.connection !== undefined ||
        input.ticket !== undefined ||
        input.since !== undefined ||
        input.until !== undefined ||
        input.text !== undefined;
      const rows = searching
        ? await searchRecordings(ctx, archive, { ...input, principal, limit })
        : await ctx.store.listSessions({ limit, before: input.before, principal });
      const out = [];
      for (const row of rows) {
        const session = 'summary' in row ? row : await ctx.store.getSession(row.id);
        const summary = session?.summary ?? {};
        const recording = 'summary' in row ? await ctx.store.getRecording(row.id) : row;
        out.push({
          id: row.id,
          frontend: row.frontend,
          principal: row.principal,
          connection: row.connection,
          startedAt: row.startedAt,
          endedAt: row.endedAt,
          outcome: session?.outcome ?? '-',
          method: summary.method ?? null,
          path: summary.path ?? null,
          status: summary.status ?? null,
          recorded: recording === null ? 'metadata' : recording.erasedAt === null ? 'full' : 'erased',
        });
      }
      return out;
    },
  }),
  sessionRecording: op({
    method: 'GET',
    path: '/v1/sessions/:id/recording',
    summary:
      "A session's full recording: its events, verified against the hash in the audit log and decrypted (what the client sent and received; tickets, never secrets).",
    input: () => z.object({ id: z.string().min(1).max(64) }),
    async run(ctx, input) {
      const { recordingArchive } = await import('../server/recordings.js');
      const { loadRecording } = await import('../recording/archive.js');
      const { record, events } = await loadRecording(recordingArchive(ctx), input.id);
      const session = await ctx.store.getSession(input.id);
      return {
        id: record.id,
        frontend: record.frontend,
        principal: record.principal,
        connection: record.connection,
        startedAt: record.startedAt,
        endedAt: record.endedAt,
        outcome: session?.outcome ?? null,
        hash: record.hash,
        events,
      };
    },
  }),
  sessionExport: op({
    method: 'GET',
    path: '/v1/sessions/:id/export',
    summary:
      'A self-contained, verifiable bundle of a full recording: events, the sealed file, its data key and the audit records vouching for it.',
    input: () => z.object({ id: z.string().min(1).max(64) }),
    async run(ctx, input) {
      const { recordingArchive } = await import('../server/recordings.js');
      const { exportRecording } = await import('../recording/archive.js');
      return exportRecording(recordingArchive(ctx), input.id);
    },
  }),
  sessionErase: op({
    method: 'POST',
    path: '/v1/sessions/:id/erase',
    summary: "Erase a session's full recording: its data key is destroyed and its file removed (audited).",
    input: () => z.object({ id: z.string().min(1).max(64) }),
    async run(ctx, input, actor) {
      const { recordingArchive } = await import('../server/recordings.js');
      const { eraseRecording } = await import('../recording/archive.js');
      const erased = await eraseRecording(
        recordingArchive(ctx),
        ctx.audit,
        ctx.clock,
        input.id,
        'operator',
        actor,
      );
      if (!erased) {
        throw new CoatcheckError('CC_ERR_NOT_FOUND', `no live full recording of session ${input.id}`, {
          details: { id: input.id },
        });
      }
      return { id: input.id, erased };
    },
  }),
  recordingRetention: op({
    method: 'POST',
    path: '/v1/recordings/retention',
    summary:
      'Apply recording retention now: erase recordings older than recording.retention.maxAge, then the oldest beyond maxBytes; delete session rows older than maxAge.',
    input: () => z.object({}),
    async run(ctx, _input, actor) {
      const { recordingArchive } = await import('../server/recordings.js');
      const { applyRetention } = await import('../recording/archive.js');
      return applyRetention(recordingArchive(ctx), ctx.audit, ctx.clock, retentionLimits(ctx), actor);
    },
  }),
  sessionShow: op({
    method: 'GET',
    path: '/v1/sessions/:id',
    summary: 'One recorded session with its events (ids, sizes, codes and timings; never values).',
    input: () => z.object({ id: z.string().min(1).max(64) }),
    async run(ctx, input) {
      const record = await ctx.store.getSession(input.id);
      if (record === null) {
        throw new CoatcheckError('CC_ERR_NOT_FOUND', `no session ${input.id}`, { details: { id: input.id } });
      }
      return record;
    },
  }),

  keysRotate: op({
    method: 'POST',
    path: '/v1/keys/rotate',
    summary:
      'Rotate the master key in phases safe with several replicas: add, activate, rewrap, retire (resumes a rotation in progress; tickets are unchanged).',
    input: () => z.object({ until: z.enum(['added', 'activated', 'rewrapped', 'retired']).optional() }),
    async run(ctx, input, actor) {
      const { rotateMasterKey } = await import('./rotate.js');
      return rotateMasterKey(ctx, actor, input.until === undefined ? {} : { until: input.until });
    },
  }),
  caExport: op({
    method: 'GET',
    path: '/v1/ca',
    summary:
      "The forward proxy's CA certificate (PEM; made now if the home predates it). Its key never leaves the vault.",
    input: () => z.object({}),
    async run(ctx) {
      const { openProxyCa } = await import('../vault/proxy-ca.js');
      const ca = await openProxyCa(ctx.store, ctx.keys.masters);
      return { certificate: ca.cert, fingerprint: ca.fingerprint };
    },
  }),
  kubeconfig: op({
    method: 'POST',
    path: '/v1/kubeconfig',
    summary:
      "Issue a ticket for a kubernetes connection's credential to an agent, with the gateway's Kubernetes address: what `coatcheck kubeconfig` prints.",
    input: () =>
      z.object({
        agent: name,
        connection: name,
        ttl: duration,
        uses: z.number().int().min(1).max(1_000_000_000).optional(),
      }),
    async run(ctx, input, actor) {
      const connection = await ctx.connections.get(input.connection);
      if (connection === null || connection.type !== 'kubernetes') {
        throw new CoatcheckError('CC_ERR_NOT_FOUND', `no kubernetes connection named ${input.connection}`, {
          details: { name: input.connection },
        });
      }
      if (connection.credential === null) {
        throw new CoatcheckError(
          'CC_ERR_INVALID_ARGUMENT',
          `connection ${input.connection} has no --credential to issue a ticket for`,
          { details: { field: 'connection' } },
        );
      }
      const principal = await principalOf(ctx, input.agent);
      const issued = await ctx.vault.issueTicket(
        {
          secret: connection.credential,
          principal,
          destinations: [`conn:${connection.name}`],
          ttlMs: input.ttl,
          maxUses: input.uses,
        },
        actor,
      );
      const listen =
        ctx.endpoints.kubernetes ??
        (ctx.config.listen.kubernetes ? `https://${ctx.config.listen.kubernetes}` : null);
      const { proxyCaCertificate } = await import('../vault/proxy-ca.js');
      return {
        agent: input.agent,
        connection: connection.name,
        gateway: listen,
        ticket: issued.ticket,
        ticketId: issued.view.id,
        expiresAt: issued.view.expiresAt,
        // The listener's certificate chains to the gateway's local CA.
        certificate: await proxyCaCertificate(ctx.store, ctx.keys.masters),
      };
    },
  }),
  sshHostKey: op({
    method: 'GET',
    path: '/v1/ssh/host-key',
    summary:
      "The SSH front-end's host key: the public key line for known_hosts and its SHA256 fingerprint (made now if the home predates it). Its private half never leaves the vault.",
    input: () => z.object({}),
    async run(ctx) {
      const { sshHostPublicKey } = await import('../vault/ssh-host-key.js');
      return sshHostPublicKey(ctx.store, ctx.keys.masters);
    },
  }),
  sshHostKeyRotate: op({
    method: 'POST',
    path: '/v1/ssh/host-key/rotate',
    summary:
      "Replace the SSH front-end's host key (audited); a running SSH listener serves the new key after a restart. Agents' known_hosts must be updated.",
    input: () => z.object({}),
    async run(ctx, _input, actor) {
      const { rotateSshHostKey } = await import('../vault/ssh-host-key.js');
      return rotateSshHostKey(ctx.store, ctx.keys.masters, ctx.audit, actor);
    },
  }),
  agentEnv: op({
    method: 'GET',
    path: '/v1/agents/:name/env',
    summary: "What an agent's process needs to use the forward proxy: its address and the CA certificate.",
    input: () => z.object({ name }),
    async run(ctx, input) {
      await principalOf(ctx, input.name);
      const { openProxyCa } = await import('../vault/proxy-ca.js');
      const ca = await openProxyCa(ctx.store, ctx.keys.masters);
      return {
        agent: input.name,
        // The running server's forward proxy (serve --listen-proxy), else the configured one.
        proxy: ctx.endpoints.proxy?.replace(/^http:\/\//, '') ?? ctx.config.listen.proxy,
        // The gateway's own HTTP listener (reverse proxy, LLM guard, MCP): never through the proxy.
        gateway: [ctx.endpoints.http ?? (ctx.config.listen.http ? `http://${ctx.config.listen.http}` : null)]
          .filter((u): u is string => typeof u === 'string')
          .map((u) => u.replace(/^https?:\/\//, '').replace(/\/.*$/, '')),
        certificate: ca.cert,
        fingerprint: ca.fingerprint,
      };
    },
  }),
  approvalList: op({
    method: 'GET',
    path: '/v1/approvals',
    summary: 'List approval requests (newest first), optionally by status.',
    input: () =>
      z.object({ status: z.enum(['pending', 'approved', 'denied', 'expired', 'used']).optional() }),
    run: (ctx, input) => ctx.approvals.list(input.status),
  }),
  approvalShow: op({
    method: 'GET',
    path: '/v1/approvals/:id',
    summary: 'One approval request: the exact operation, the approvers, the decisions.',
    input: () => z.object({ id: z.string().min(1).max(64) }),
    run: (ctx, input) => ctx.approvals.get(input.id),
  }),
  approvalApprove: op({
    method: 'POST',
    path: '/v1/approvals/:id/approve',
    summary: 'Approve a pending request: single-use, or for a time window with `for`.',
    input: () =>
      z.object({
        id: z.string().min(1).max(64),
        for: duration,
        as: z.string().min(1).max(128).optional(),
        groups: z.array(z.string().min(1).max(64)).max(32).optional(),
      }),
    run: (ctx, input, actor, principal) =>
      ctx.approvals.decide(
        input.id,
        {
          approver: approverOf(input.as, input.groups, actor, principal),
          decision: 'approve',
          forMs: input.for,
        },
        actor,
      ),
  }),
  approvalDeny: op({
    method: 'POST',
    path: '/v1/approvals/:id/deny',
    summary: 'Deny a pending request.',
    input: () =>
      z.object({
        id: z.string().min(1).max(64),
        reason: z.string().max(500).optional(),
        as: z.string().min(1).max(128).optional(),
      }),
    run: (ctx, input, actor) =>
      ctx.approvals.decide(
        input.id,
        { approver: approverOf(input.as, [], actor), decision: 'deny', reason: input.reason },
        actor,
      ),
  }),
  ...workflowOperations,
} as const;

export type Operations = typeof operations;
export type OperationName = keyof Operations;
export type OperationInput<N extends OperationName> = z.input<Operations[N]['input']>;
export type OperationOutput<N extends OperationName> = Awaited<ReturnType<Operations[N]['run']>>;
