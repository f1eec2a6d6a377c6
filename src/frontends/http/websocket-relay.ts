import { WebSocket } from 'ws';
import type { ErrorCode } from '../../core/errors.js';
import type { GatewaySession } from '../../gateway/session.js';
import { closeLike, OrderedRelay, sendMessage } from '../../gateway/websocket.js';
import { clip } from '../../recording/model.js';

/**
 * Join the agent's WebSocket and the upstream's until both are closed. Upstream messages,
 * pings, pongs and close reasons are inspected, in order, each whole; the agent's pass as
 * sent. Resolves with the code the session ended with (null: it ended normally).
 */
export function relayWebSocket(
  session: GatewaySession,
  agent: WebSocket,
  upstream: WebSocket,
  inspect: (payload: Buffer) => Promise<Buffer>,
): Promise<ErrorCode | null> {
  const recording = session.recording;
  return new Promise((resolve) => {
    let code: ErrorCode | null = null;
    let open = 2;
    const fail = (failure: ErrorCode) => {
      code ??= failure;
      agent.terminate();
      upstream.terminate();
    };
    const toAgent = new OrderedRelay(upstream, () => fail('CC_ERR_GATEWAY_INSPECTION_FAILED'));
    const toUpstream = new OrderedRelay(agent, () => fail('CC_ERR_GATEWAY_INSPECTION_FAILED'));
    const record = (direction: 'in' | 'out', data: Buffer, binary: boolean) => {
      if (recording === null) return;
      session.record('ws.message', direction, {
        opcode: binary ? 2 : 1,
        data: clip(data, recording.limits.maxBodyBytes),
      });
    };
    // A control frame's payload is at most 125 bytes: a ticket longer than what it replaced is cut.
    const control = (payload: Buffer) => payload.subarray(0, 125);
    upstream.on('message', (data: Buffer, binary: boolean) =>
      toAgent.run(async () => {
        const clean = await inspect(data);
        record('out', clean, binary);
        await sendMessage(agent, clean, binary);
      }),
    );
    upstream.on('ping', (data: Buffer) =>
      toAgent.run(async () => {
        const clean = control(await inspect(data));
        if (agent.readyState === WebSocket.OPEN) agent.ping(clean);
      }),
    );
    upstream.on('pong', (data: Buffer) =>
      toAgent.run(async () => {
        const clean = control(await inspect(data));
        if (agent.readyState === WebSocket.OPEN) agent.pong(clean);
      }),
    );
    agent.on('message', (data: Buffer, binary: boolean) => {
      record('in', data, binary);
      toUpstream.run(() => sendMessage(upstream, data, binary));
    });
    agent.on('ping', (data: Buffer) =>
      toUpstream.run(() => {
        if (upstream.readyState === WebSocket.OPEN) upstream.ping(data);
      }),
    );
    agent.on('pong', (data: Buffer) =>
      toUpstream.run(() => {
        if (upstream.readyState === WebSocket.OPEN) upstream.pong(data);
      }),
    );
    const onRevoked = () => fail(session.terminatedBy ?? 'CC_ERR_TICKET_REVOKED');
    session.signal.addEventListener('abort', onRevoked, { once: true });
    const closed = () => {
      open -= 1;
      if (open > 0) return;
      session.signal.removeEventListener('abort', onRevoked);
      resolve(code);
    };
    upstream.on('close', (status: number, reason: Buffer) => {
      // What the upstream sent before it closed is still queued: it goes first, then the close.
      toAgent.run(async () => closeLike(agent, status, await inspect(reason)));
      void toAgent.idle().then(closed);
    });
    agent.on('close', (status: number, reason: Buffer) => {
      toUpstream.run(() => closeLike(upstream, status, reason));
      void toUpstream.idle().then(closed);
    });
    // Protocol errors (a message too long, invalid UTF-8 in text): ws closes that side; the other follows.
    upstream.on('error', () => fail('CC_ERR_GATEWAY_UPSTREAM_ENCODING'));
    agent.on('error', () => fail('CC_ERR_HTTP_BAD_REQUEST'));
    if (session.signal.aborted) onRevoked();
    upstream.resume();
    agent.resume();
  });
}
