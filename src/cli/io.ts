import { CoatcheckError, type ErrorCode } from '../core/errors.js';

/** What a command may touch: injectable so commands are tested with in-memory streams. */
export interface CliIo {
  readonly stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly env: NodeJS.ProcessEnv;
}

/** Exit codes, documented in docs/cli.md. */
export const EXIT = {
  ok: 0,
  /** The operation was refused or found a problem (not found, exists, tampering, refused ticket). */
  failed: 1,
  /** The command line or the config is wrong. */
  usage: 2,
  /** The environment is wrong: no home, no or wrong master key, store or server unavailable, internal error. */
  environment: 3,
} as const;

const USAGE_CODES = new Set<ErrorCode>([
  'CC_ERR_INVALID_ARGUMENT',
  'CC_ERR_DEST_INVALID',
  'CC_ERR_CONFIG_INVALID',
  'CC_ERR_SECRET_EMPTY',
  'CC_ERR_SECRET_TOO_LARGE',
  'CC_ERR_TICKET_MALFORMED',
  'CC_ERR_TICKET_CHECKSUM',
  'CC_ERR_AGENT_KEY_MALFORMED',
  'CC_ERR_POLICY_INVALID',
]);
const ENVIRONMENT_CODES = new Set<ErrorCode>([
  'CC_ERR_INTERNAL',
  'CC_ERR_HOME_MISSING',
  'CC_ERR_MASTER_KEY_MISSING',
  'CC_ERR_MASTER_KEY_INVALID',
  'CC_ERR_MASTER_KEY_WRONG',
  'CC_ERR_STORE_CORRUPT',
  'CC_ERR_STORE_UNAVAILABLE',
  'CC_ERR_STORE_SCHEMA_NEWER',
  'CC_ERR_SERVER_UNREACHABLE',
  'CC_ERR_AUDIT_UNAVAILABLE',
  'CC_ERR_ADMIN_UNAUTHORIZED',
]);

export function exitCodeFor(error: CoatcheckError): number {
  if (USAGE_CODES.has(error.code)) return EXIT.usage;
  if (ENVIRONMENT_CODES.has(error.code)) return EXIT.environment;
  return EXIT.failed;
}

/** Read stdin whole, bounded (a secret is at most 64 KiB; we stop reading well past that). */
export async function readAllStdin(io: CliIo, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of io.stdin) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    size += buffer.length;
    if (size > limit) {
      throw new CoatcheckError('CC_ERR_SECRET_TOO_LARGE', `the value read is larger than ${limit} bytes`);
    }
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * Terminal control characters in text an agent can influence (SQL, paths, tool names reach
 * summaries and records) become visible escapes, so no output can move the cursor, rewrite a
 * line (\r), set the clipboard (OSC 52) or recolour the terminal. Newlines and tabs stay.
 */
export function visibleControls(text: string): string {
  return text.replace(
    /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
}
