import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../core/errors.js';
import { openUpstreamWebSocket } from './websocket.js';

/**
 * A WebSocket request the ws library cannot send as offered is refused with a fixed
 * message: the library's own words (which may quote what would have gone upstream, tickets
 * already exchanged for secrets) go to the server log only, never into the client's details.
 */
describe('openUpstreamWebSocket: a request ws cannot send', () => {
  it('is refused without the library message in what the client sees; the server log keeps it', async () => {
    const canary = 'ws-canary-released-secret-1a2b3c4d';
    const logged: Array<{ fields: Record<string, unknown>; msg: string }> = [];
    const failure = await openUpstreamWebSocket({
      url: new URL(`http://127.0.0.1:9/chat?token=${canary}`),
      headers: ['authorization', `Bearer ${canary}`],
      // Not a token: ws throws before anything is sent.
      protocols: [`chat ${canary}`],
      timeoutMs: 1_000,
      signal: new AbortController().signal,
      log: {
        warn: ((fields: Record<string, unknown>, msg: string) => logged.push({ fields, msg })) as never,
      },
    }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(CoatcheckError);
    const error = failure as CoatcheckError;
    expect(error.code).toBe('CC_ERR_HTTP_BAD_REQUEST');
    expect(error.message).toBe('the WebSocket request cannot be sent upstream as offered');
    expect(error.details).toBeUndefined();
    expect(JSON.stringify({ message: error.message, details: error.details })).not.toContain(canary);
    expect(logged).toHaveLength(1);
    expect(logged[0]!.msg).toBe('websocket: the upgrade could not be sent upstream as offered');
    expect(String(logged[0]!.fields.reason)).toMatch(/subprotocol/i);
  });
});
