/**
 * The relay protocol (ADR 0025), shared by the gateway's relay listener and `relay run`.
 *
 * 1. The relay dials out: TLS to the gateway's relay listener, verifying the certificate
 *    against the gateway's CA alone (pinned) and the name it dialled.
 * 2. HTTP/1.1 `GET /v1/relay/session` with `Authorization: Bearer ccr_…`,
 *    `Connection: Upgrade` and `Upgrade: coatcheck-relay/1`. A refusal is an ordinary
 *    HTTP response with a JSON body `{ code, message }`.
 * 3. `101 Switching Protocols`: the same TLS connection carries HTTP/2 with the roles
 *    reversed — the gateway is the HTTP/2 client, the relay the HTTP/2 server — so the
 *    gateway opens streams towards the relay without the relay listening anywhere.
 * 4. Each stream is an HTTP/2 CONNECT (RFC 9113 §8.5) to `host:port`; the relay answers
 *    200 once its TCP connection to the target is open (then the stream carries bytes both
 *    ways, under HTTP/2 flow control), or 502 with `coatcheck-error: <code>` and a reason.
 *    PING frames are the heartbeat both ways.
 */
import type { Settings } from 'node:http2';

export const RELAY_PATH = '/v1/relay/session';
export const RELAY_UPGRADE = 'coatcheck-relay/1';
/** The header a relay's refusal of a CONNECT carries its error code in. */
export const RELAY_ERROR_HEADER = 'coatcheck-error';
/** The header a refusal carries its reason in (a short fixed word, never data). */
export const RELAY_REASON_HEADER = 'coatcheck-reason';

/** Largest `host:port` a CONNECT may name. */
export const MAX_AUTHORITY_LENGTH = 300;
/** Largest refusal body the relay reads from the gateway. */
export const MAX_REFUSAL_BYTES = 4096;

/** Per-stream window: big enough that one stream fills a fast link. */
export const STREAM_WINDOW = 16 * 1024 * 1024;
/** Connection-level window (all streams of a session). */
export const SESSION_WINDOW = 64 * 1024 * 1024;
/** Largest frame either side sends: fewer frames per byte than the 16 KiB default. */
export const MAX_FRAME = 1024 * 1024 - 1;

export function relaySettings(maxStreams: number): Settings {
  return {
    initialWindowSize: STREAM_WINDOW,
    maxFrameSize: MAX_FRAME,
    maxConcurrentStreams: maxStreams,
    enablePush: false,
  };
}

/** `host:port` as a CONNECT authority (IPv6 in brackets). */
export function authority(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Split a CONNECT authority; null when it is not `host:port` with a port 1-65535. */
export function parseAuthority(text: string): { host: string; port: number } | null {
  if (text.length === 0 || text.length > MAX_AUTHORITY_LENGTH) return null;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(text);
  if (m === null) return null;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return null;
  return { host: (m[1] ?? m[2])!, port };
}
