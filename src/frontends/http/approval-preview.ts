import { hopByHop } from './protocol/headers.js';

/**
 * The raw preview of a held HTTP request, for an approver: the request line with the
 * whole URL, the headers that say what the request does, and the body as text. Tickets
 * and secrets are still in it: the approvals module cleans the text before keeping it
 * (src/approvals/preview.ts). Headers that authenticate to the gateway are left out.
 */
export interface HttpPreviewInput {
  readonly method: string;
  /** Origin and path as they go upstream, query included. */
  readonly url: string;
  readonly rawHeaders: readonly string[];
  readonly connectionHeader: string | string[] | undefined;
  readonly contentEncoding: string | undefined;
  readonly body: Buffer | null;
  /** Headers the gateway adds from the connection (credentials), named, never valued. */
  readonly injected: readonly string[];
  /** The agent key the request authenticated with: replaced wherever it appears. */
  readonly agentKey: string | null;
}

/** Never shown: they authenticate to the gateway or describe the hop, not the operation. */
const LEFT_OUT = new Set(['proxy-authorization', 'host', 'content-length', 'expect', 'accept-encoding']);
/** Headers whose values are credentials: tickets in them are shown, the rest is not. */
const CREDENTIAL_HEADER = /auth|cookie|token|secret|key|session|password|signature/i;
/** Longest header value shown (a preview is not a place for 8 KiB cookies). */
const MAX_HEADER_VALUE = 1024;

function credentialValue(value: string): string {
  // Tickets stay (they are what the approver should see); every other long run is hidden.
  return value.replace(/cct_[0-9A-Za-z]{28}|[^\s,;=]{9,}/g, (run) =>
    run.startsWith('cct_') && run.length === 32 ? run : `[hidden: ${run.length} characters]`,
  );
}

function bodyText(body: Buffer, contentEncoding: string | undefined): string {
  const encoding = (contentEncoding ?? '').trim().toLowerCase();
  if (encoding !== '' && encoding !== 'identity')
    return `[body: ${body.length} bytes, content-encoding ${encoding.slice(0, 40)}: not shown]`;
  if (body.includes(0)) return `[body: ${body.length} bytes of binary data: not shown]`;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    return `[body: ${body.length} bytes, not UTF-8 text: not shown]`;
  }
}

export function httpPreview(input: HttpPreviewInput): string {
  const skip = hopByHop(input.connectionHeader);
  const lines = [`${input.method} ${input.url}`];
  const raw = input.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (skip.has(lower) || LEFT_OUT.has(lower) || lower.startsWith(':')) continue;
    let value = raw[i + 1]!;
    if (CREDENTIAL_HEADER.test(lower)) value = credentialValue(value);
    if (value.length > MAX_HEADER_VALUE)
      value = `${value.slice(0, MAX_HEADER_VALUE)}[… ${value.length - MAX_HEADER_VALUE} more characters]`;
    lines.push(`${name}: ${value}`);
  }
  for (const name of input.injected) lines.push(`${name}: [added by the gateway from the connection]`);
  let text = lines.join('\n');
  if (input.body === null) text += '\n\n[upgrade: no body]';
  else if (input.body.length > 0) text += `\n\n${bodyText(input.body, input.contentEncoding)}`;
  if (input.agentKey !== null && input.agentKey.length > 0)
    text = text.split(input.agentKey).join('[agent key]');
  return text;
}
