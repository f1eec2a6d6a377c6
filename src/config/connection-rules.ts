// Its own module: the admin operations validate `connection add` rules with it without
// building the whole config schema (a good part of a short command's start).
import * as z from 'zod';

/** Per-connection statement rules (PostgreSQL front-end), until the policy engine replaces them. */
export const connectionRulesSchema = z
  .object({
    readOnly: z.boolean().optional(),
    blockDdl: z.boolean().optional(),
    requireApprovalForWrites: z.boolean().optional(),
    rowLimit: z.number().int().min(1).max(1_000_000_000).optional(),
    maskColumns: z.array(z.string().min(1).max(128)).max(64).optional(),
    scanSecrets: z.boolean().optional(),
    /** Session recording for this connection: off, metadata (the default) or full (docs/recording.md). */
    recording: z.enum(['off', 'metadata', 'full']).optional(),
    /** Other databases a client may pick as `<connection>/<database>` (`*`: any). */
    databases: z
      .array(z.string().regex(/^(\*|[A-Za-z0-9_][A-Za-z0-9_$-]{0,62})$/, 'must be a database name or *'))
      .max(256)
      .optional(),
    /** The upstream session's search_path, pinned at login; statements may not change it. */
    searchPath: z
      .string()
      .min(1)
      .max(1024)
      .regex(/^[^\0]*$/, 'must not contain NUL')
      .optional(),
    /** kubernetes: the PEM CA certificates the API server's certificate is verified against (`--ca FILE`). */
    ca: z
      .string()
      .max(64 * 1024)
      .regex(/^-----BEGIN CERTIFICATE-----[\s\S]*-----END CERTIFICATE-----\s*$/, 'must be PEM certificates')
      .optional(),
    /**
     * SSH connections: the upstream's pinned host key, `ssh-ed25519 AAAA…` (a line of
     * `ssh-keyscan`) or its `SHA256:…` fingerprint, or `tofu` (the key presented at the
     * first connection is recorded and pinned, audited). The gateway refuses any other key.
     */
    hostKey: z
      .string()
      .max(8192)
      .regex(
        /^(tofu|SHA256:[A-Za-z0-9+/]{43}|(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) [A-Za-z0-9+/]+={0,2})$/,
        'must be an OpenSSH public key line (type and base64), a SHA256: fingerprint, or tofu',
      )
      .optional(),
  })
  .strict();
