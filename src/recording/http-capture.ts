import { clip, clipText, type Payload } from './model.js';

/** Longest header value and URL kept in a recording (characters). */
export const MAX_HEADER_TEXT = 8 * 1024;
/** Most headers kept per message. */
export const MAX_HEADERS = 200;

/** Headers that carry the agent's own key, never recorded (a ticket is; the key that authenticates the agent is not). */
const AGENT_CREDENTIAL_HEADERS = new Set(['proxy-authorization']);

/**
 * Header pairs as the client sent or received them (Node's `rawHeaders` layout: name,
 * value, name, value…), bounded, with the agent's own key replaced by `[agent key]`.
 */
export function recordedHeaders(raw: readonly string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i + 1 < raw.length && out.length < MAX_HEADERS; i += 2) {
    const name = clipText(raw[i]!, 256);
    const value = AGENT_CREDENTIAL_HEADERS.has(name.toLowerCase())
      ? '[agent key]'
      : clipText(raw[i + 1]!, MAX_HEADER_TEXT);
    out.push([name, value]);
  }
  return out;
}

/** Keeps the first `limit` bytes of a body streamed through it, and counts the rest. */
export class BodyTap {
  readonly #limit: number;
  readonly #parts: Buffer[] = [];
  #kept = 0;
  total = 0;

  constructor(limit: number) {
    this.#limit = limit;
  }

  push(chunk: Buffer): void {
    this.total += chunk.length;
    if (this.#kept >= this.#limit) return;
    const part = chunk.subarray(0, this.#limit - this.#kept);
    // A copy: the chunk's memory may be reused by the stream.
    this.#parts.push(Buffer.from(part));
    this.#kept += part.length;
  }

  payload(): Payload {
    const kept = Buffer.concat(this.#parts);
    const payload = clip(kept, this.#limit);
    return this.total > kept.length ? { ...payload, bytes: this.total, truncated: true } : payload;
  }
}
