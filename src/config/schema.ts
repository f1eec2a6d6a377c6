import * as z from 'zod';
import { parseDuration } from '../core/duration.js';
import { connectionRulesSchema } from './connection-rules.js';
import { CONNECTION_TYPES, LISTEN_ADDRESS_RE } from './defaults.js';

// Re-exported: callers that already load zod may take them from here.
export { CONNECTION_TYPES, DEFAULT_CONFIG_YAML } from './defaults.js';
export { connectionRulesSchema };

export const listenAddress = z
  .string()
  .regex(LISTEN_ADDRESS_RE, 'must be HOST:PORT, like 127.0.0.1:7070')
  .refine((text) => Number(text.slice(text.lastIndexOf(':') + 1)) <= 65535, 'port must be at most 65535');

const duration = z.string().refine((text) => {
  try {
    parseDuration(text);
    return true;
  } catch {
    return false;
  }
}, 'must look like 90s, 15m, 8h or 7d');

export const connectionSchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/, 'must be letters, digits, _ or -, at most 63'),
    type: z.enum(CONNECTION_TYPES),
    url: z.string().min(1).max(2048),
    credential: z.string().min(1).max(128).optional(),
    injectHeaders: z.record(z.string().max(256), z.string().max(4096)).optional(),
    rules: connectionRulesSchema.optional(),
    /** The relay (`relay create`) the gateway reaches this connection's upstream through (docs/relay.md). */
    via: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/, 'must be a relay name')
      .optional(),
  })
  .strict();

export const configSchema = z
  .object({
    store: z
      .object({
        driver: z.enum(['sqlite', 'postgres']).default('sqlite'),
        /** SQLite file, relative to the home directory. */
        path: z.string().min(1).default('coatcheck.db'),
        /** PostgreSQL URL; COATCHECK_DATABASE_URL overrides it (and keeps the password out of the file). */
        url: z.string().optional(),
      })
      .strict()
      .prefault({}),
    keys: z
      .object({
        /**
         * Directory of master key files (`<kid>.key`), relative to the home unless absolute.
         * Replicas that share a store must see the same keys: give them one directory (a
         * shared or synchronised mount) or copy each new key file before activating it.
         */
        dir: z.string().min(1).max(4096).default('keys'),
      })
      .strict()
      .prefault({}),
    listen: z
      .object({
        admin: listenAddress.default('127.0.0.1:7070'),
        http: listenAddress.nullable().default(null),
        postgres: listenAddress.nullable().default(null),
        /** Forward proxy (HTTPS_PROXY / HTTP_PROXY, CONNECT with TLS interception). */
        proxy: listenAddress.nullable().default(null),
        /** Kubernetes API front-end (kubectl with a kubeconfig from `coatcheck kubeconfig`). */
        kubernetes: listenAddress.nullable().default(null),
        /** SSH front-end (`ssh -p PORT AGENT%CONNECTION@HOST`). */
        ssh: listenAddress.nullable().default(null),
        /** Relays near the targets dial in here (TLS under the gateway's CA, docs/relay.md). */
        relay: listenAddress.nullable().default(null),
        /**
         * Descriptors each listener of `serve` polls: a busy gateway accepts up to this many
         * new connections per turn of its event loop, where one would make a burst queue
         * (ADR 0034). 1 turns the copies off.
         */
        acceptors: z.number().int().min(1).max(32).default(4),
      })
      .strict()
      .prefault({}),
    relay: z
      .object({
        /**
         * Names (DNS names or IP addresses) relays use to reach the relay listener; its
         * certificate names these, besides localhost, 127.0.0.1 and the listen host.
         */
        serverNames: z.array(z.string().min(1).max(253)).max(32).default([]),
        /** Streams one relay session may carry at once (the gateway opens no more). */
        maxStreamsPerSession: z.number().int().min(1).max(100_000).default(1000),
        /** How long opening a stream through a relay (its TCP connect to the target) may take (ms). */
        openTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
      })
      .strict()
      .prefault({}),
    /** On SIGINT/SIGTERM: how long work in flight may finish before the listeners close. */
    shutdown: z
      .object({
        drainTimeout: duration.default('5s'),
      })
      .strict()
      .prefault({}),
    tickets: z
      .object({
        defaultTtl: duration.default('1h'),
        maxTtl: duration.default('30d'),
        cacheMs: z.number().int().min(0).max(60_000).default(5_000),
        /** Lifetime of a ticket for a secret found in a response that no request ticket explains. */
        foundTtl: duration.default('15m'),
      })
      .strict()
      .prefault({}),
    agents: z
      .object({ maxTtl: duration.default('90d') })
      .strict()
      .prefault({}),
    /** Session recordings (docs/recording.md). */
    recording: z
      .object({
        /** Mode of connections that name none: off, metadata or full. */
        default: z.enum(['off', 'metadata', 'full']).default('metadata'),
        /** Most bytes of events one session's full recording keeps (events beyond are counted, not kept). */
        maxSessionBytes: z
          .number()
          .int()
          .min(4096)
          .max(1024 * 1024 * 1024)
          .default(8 * 1024 * 1024),
        /** Most bytes of one HTTP body, WebSocket message or SQL value kept per event. */
        maxBodyBytes: z
          .number()
          .int()
          .min(0)
          .max(16 * 1024 * 1024)
          .default(64 * 1024),
        /** Most result rows kept per PostgreSQL statement (the row count is always kept). */
        maxRowsPerStatement: z.number().int().min(0).max(100_000).default(100),
        /** Full recordings waiting to be written; beyond it new sessions are refused or degraded. */
        maxQueued: z.number().int().min(1).max(100_000).default(256),
        /** When the queue is full: refuse new full-mode sessions, or record them as metadata only. */
        whenFull: z.enum(['refuse', 'metadata']).default('metadata'),
        /** Directory of sealed recordings, relative to the home unless absolute. */
        dir: z.string().min(1).max(4096).default('recordings'),
        /**
         * Where new recordings are stored: `file` (under `dir`, the default) or `s3` (an
         * S3-compatible object store). Recordings already stored stay where they were written.
         */
        storage: z
          .discriminatedUnion('kind', [
            z.object({ kind: z.literal('file') }).strict(),
            z
              .object({
                kind: z.literal('s3'),
                /** The service's URL (MinIO, Ceph, a local server); absent: AWS S3 in `region`. */
                endpoint: z
                  .url({ protocol: /^https?$/ })
                  .max(2048)
                  .optional(),
                bucket: z
                  .string()
                  .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be an S3 bucket name')
                  .refine((b) => !b.includes('..'), 'must be an S3 bucket name'),
                region: z
                  .string()
                  .regex(/^[a-z0-9-]{1,64}$/)
                  .default('us-east-1'),
                /** Key prefix of every recording object (letters, digits, `.`, `_`, `-`, `/`). */
                prefix: z
                  .string()
                  .max(256)
                  .regex(/^(?:[A-Za-z0-9_-][A-Za-z0-9._-]*\/)*$/, 'must be path segments each ending in /')
                  .default(''),
                /** Path-style addressing (http://host/bucket/key): most S3-compatible servers need it. */
                forcePathStyle: z.boolean().default(true),
                /**
                 * Where the access key comes from: a vault secret holding
                 * {"accessKeyId","secretAccessKey"[,"sessionToken"]} as JSON, or the
                 * environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
                 * Never logged, audited or recorded.
                 */
                credentials: z.union([
                  z.object({ secret: z.string().min(1).max(128) }).strict(),
                  z.object({ env: z.literal(true) }).strict(),
                ]),
                /** Most milliseconds one storage call may take before it fails. */
                timeoutMs: z.number().int().min(100).max(600_000).default(30_000),
              })
              .strict(),
          ])
          .default({ kind: 'file' }),
        retention: z
          .object({
            /** Recordings older than this are erased (their data key destroyed, files removed). */
            maxAge: duration.default('30d'),
            /** Most stored bytes of all recordings; the oldest are erased beyond it. */
            maxBytes: z
              .number()
              .int()
              .min(1024 * 1024)
              .max(Number.MAX_SAFE_INTEGER)
              .default(10 * 1024 * 1024 * 1024),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    audit: z
      .object({
        groupCommitMs: z.number().int().min(0).max(1_000).default(0),
        maxBatch: z.number().int().min(1).max(10_000).default(512),
      })
      .strict()
      .prefault({}),
    http: z
      .object({
        /** Largest request body accepted (bytes); bodies that are scanned for tickets are buffered up to this. */
        bodyLimit: z
          .number()
          .int()
          .min(1024)
          .max(1024 * 1024 * 1024)
          .default(8 * 1024 * 1024),
        /** Upstream connect, response-headers and body-idle timeout (ms). */
        upstreamTimeoutMs: z.number().int().min(100).max(600_000).default(30_000),
        /** PEM file of extra CA certificates trusted for https upstreams (besides the system roots). */
        upstreamCaFile: z.string().min(1).max(4096).optional(),
        /** Most distinct tickets one request may carry. */
        maxTicketsPerRequest: z.number().int().min(1).max(1024).default(64),
        /** Run the detection engine over responses: secrets the vault does not know become tickets too. */
        detectSecrets: z.boolean().default(true),
        /** Request body bytes all HTTP front-ends of this process may hold at once (503 beyond). */
        maxInFlightBodyBytes: z
          .number()
          .int()
          .min(1024)
          .max(64 * 1024 * 1024 * 1024)
          .default(64 * 1024 * 1024),
        /** Request body bytes one agent's requests in flight may hold at once (429 beyond). */
        maxInFlightBodyBytesPerAgent: z
          .number()
          .int()
          .min(1024)
          .max(64 * 1024 * 1024 * 1024)
          .default(16 * 1024 * 1024),
        /** Client connections each HTTP listener (reverse proxy, forward proxy) holds at once (503 beyond). */
        maxConnections: z.number().int().min(1).max(100_000).default(10_000),
      })
      .strict()
      .prefault({}),
    proxy: z
      .object({
        /** Hosts no secret or http connection is bound to: refuse the CONNECT (default), or tunnel it untouched. */
        unboundHosts: z.enum(['refuse', 'tunnel']).default('refuse'),
        /** PEM file of extra CA certificates trusted for intercepted upstreams (besides the system roots). */
        upstreamCaFile: z.string().min(1).max(4096).optional(),
        /** Most leaf certificates kept in memory. */
        leafCacheSize: z.number().int().min(1).max(100_000).default(1000),
      })
      .strict()
      .prefault({}),
    identity: z
      .object({
        oidc: z
          .array(
            z
              .object({
                issuer: z.string().url().max(2048),
                audience: z.union([
                  z.string().min(1).max(512),
                  z.array(z.string().min(1).max(512)).min(1).max(16),
                ]),
                groupsClaim: z.string().min(1).max(128).default('groups'),
                clockSkew: duration.default('60s'),
              })
              .strict(),
          )
          .max(16)
          .default([]),
      })
      .strict()
      .prefault({}),
    policy: z
      .object({
        /** A .cedar file or a folder of them, relative to the home. None: the built-in policy. */
        path: z.string().min(1).nullable().default(null),
        /** Zone for `context.hour` and `context.weekday`. */
        timeZone: z.string().min(1).max(64).default('UTC'),
      })
      .strict()
      .prefault({}),
    approvals: z
      .object({
        /** Slack-compatible webhook told about every new approval request. */
        webhookUrl: z.string().url().max(2048).nullable().default(null),
        /** Base URL of the console, for links in notifications. */
        consoleUrl: z.string().url().max(2048).nullable().default(null),
        /** How long a data-path operation waits for a decision before it is refused. */
        holdTimeout: duration.default('30s'),
        /** How long a request stays open for approvers. */
        pendingTtl: duration.default('1h'),
        /** How long a single-use approval stays usable for a retry of the same operation. */
        useWindow: duration.default('15m'),
      })
      .strict()
      .prefault({}),
    postgres: z
      .object({
        /** PEM certificate and key for TLS from clients; a self-signed pair is generated in the home when absent. */
        tlsCert: z.string().min(1).max(4096).optional(),
        tlsKey: z.string().min(1).max(4096).optional(),
        /** Largest protocol message accepted (bytes), checked before anything is allocated. */
        maxMessageBytes: z
          .number()
          .int()
          .min(64 * 1024)
          .max(1024 * 1024 * 1024)
          .default(64 * 1024 * 1024),
        maxConnections: z.number().int().min(1).max(100_000).default(1000),
        loginTimeoutMs: z.number().int().min(100).max(600_000).default(5_000),
        /** Largest query text classified (bytes); longer ones are refused before parsing. */
        maxStatementBytes: z
          .number()
          .int()
          .min(1024)
          .max(64 * 1024 * 1024)
          .default(256 * 1024),
        /** Most statements (semicolons) in one query text. */
        maxStatementsPerQuery: z.number().int().min(1).max(1_000_000).default(1000),
        /** Connections still logging in, in total (the oldest is closed beyond it) and per source address. */
        maxPendingLogins: z.number().int().min(1).max(100_000).default(256),
        maxPendingLoginsPerSource: z.number().int().min(1).max(100_000).default(32),
        upstreamTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
        /** Audit every statement (true) or only refused ones (false). */
        auditStatements: z.boolean().default(true),
      })
      .strict()
      .prefault({}),
    admin: z
      .object({
        /**
         * Host names (optionally `name:port`) the admin listener answers to; any other Host
         * header gets 421. Default: the listen address, localhost, 127.0.0.1 and [::1].
         */
        allowedHosts: z
          .array(
            z
              .string()
              .max(260)
              .regex(
                /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$/,
                'must be a host name or IP address, optionally with :port',
              ),
          )
          .max(64)
          .default([]),
      })
      .strict()
      .prefault({}),
    foundSecrets: z
      .object({
        /** New secrets one principal may register from values found in responses, per window. */
        maxPerPrincipal: z.number().int().min(1).max(1_000_000).default(100),
        window: duration.default('1h'),
      })
      .strict()
      .prefault({}),
    console: z
      .object({
        /** Single sign-on for humans at the console (OIDC authorization code flow with PKCE, public client). */
        oidc: z
          .object({
            issuer: z.string().url().max(2048),
            clientId: z.string().min(1).max(256),
            /** `<admin URL>/console/oidc/callback`, registered at the issuer. */
            redirectUrl: z.string().url().max(2048),
            /** Members of these groups may use the console. */
            adminGroups: z.array(z.string().min(1).max(128)).min(1).max(32),
            groupsClaim: z.string().min(1).max(128).default('groups'),
          })
          .strict()
          .nullable()
          .default(null),
      })
      .strict()
      .prefault({}),
    log: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      })
      .strict()
      .prefault({}),
    connections: z.array(connectionSchema).default([]),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type ConnectionConfig = z.infer<typeof connectionSchema>;
