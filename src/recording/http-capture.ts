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

/** What a recorded HTTP response needs from its session (the GatewaySession). */
interface RecordingSession {
  readonly recording: { readonly limits: { readonly maxBodyBytes: number } } | null;
  record(kind: string, dir: 'in' | 'out' | 'gateway', data: Record<string, unknown>): void;
}

/**
 * Records a response as the client receives it: its head now, its body as it is written
 * (an event stream chunk by chunk, as `sse.data` events with their timing; anything else
 * kept up to the body limit, one `http.body` event at the end). Null when the session is
 * not recorded in full.
 */
export function responseRecorder(
  session: RecordingSession,
  status: number,
  headers: readonly string[],
  contentType: string,
): { chunk(clean: Buffer): void; end(): void } | null {
  const recording = session.recording;
  if (recording === null) return null;
  const limit = recording.limits.maxBodyBytes;
  const streamed = /^text\/event-stream\b/i.test(contentType);
  session.record('http.response', 'out', {
    status,
    headers: recordedHeaders(headers),
    ...(streamed ? { streamed: true } : {}),
  });
  const tap = streamed ? null : new BodyTap(limit);
  return {
    chunk(clean) {
      if (clean.length === 0) return;
      if (tap !== null) tap.push(clean);
      else session.record('sse.data', 'out', { data: clip(clean, limit) });
    },
    end() {
      if (tap !== null && tap.total > 0) session.record('http.body', 'out', { body: tap.payload() });
    },
  };
}
