import type { IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

// The upstream exchange is cut short when its client goes away or its session is ended (a
// revocation): the upstream sees its request closed, not left waiting for an answer nobody
// will read. These hold the signal the HTTP engine hands undici (src/gateway/http-io.ts,
// UpstreamAbort) to that promise.

let gw: Gateway;
let up: Upstream;
let agent: { key: string; ref: string };

/** Requests the upstream holds unanswered; each resolves `closed` when the gateway drops it. */
const held: Array<{ path: string; closed: Promise<void> }> = [];
/** Every answer the clients got (searched for the canary at the end). */
const answers: string[] = [];
const SECRET = 'upstream-token-abort-test-0123456789';
let arrived: (() => void) | null = null;

function holdForever(req: IncomingMessage): void {
  held.push({
    path: req.url ?? '',
    closed: new Promise<void>((resolve) => req.socket.once('close', () => resolve())),
  });
  arrived?.();
}

const nextArrival = () => new Promise<void>((resolve) => (arrived = resolve));

const within = (wait: Promise<void>, ms = 3000) =>
  Promise.race([
    wait.then(() => 'closed'),
    new Promise<string>((resolve) => setTimeout(() => resolve('still open'), ms)),
  ]);

beforeAll(async () => {
  up = await startUpstream();
  // Long enough that only the abort, never the timeout, can close a held request in a test.
  gw = await startGateway({ extraConfig: 'http:\n  upstreamTimeoutMs: 60000\n' });
  agent = await gw.createAgent('waiter');
  await gw.addSecret('tok', SECRET, ['slow', 'model']);
  await gw.addConnection('slow', up.url);
  for (const path of ['/hold', '/hold-agent', '/hold-gone', '/hold-many']) up.handle(path, holdForever);
  // The LLM engine takes the same abort: a model call the provider has not answered yet.
  await gw.ctx.connections.add(
    { name: 'model', type: 'llm', url: `${up.url}/v1`, credential: 'tok' },
    'admin:test',
  );
  up.handle('/v1/chat/completions', holdForever);
});

afterAll(async () => {
  await gw?.close();
  await up?.close();
});

async function send(path: string, ticket: string, key = agent.key) {
  const res = await request(`${gw.url}/c/slow${path}`, {
    headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
  });
  const text = await res.body.text();
  answers.push(text);
  return { status: res.statusCode, body: JSON.parse(text) as { error?: { code?: string } } };
}

describe('an upstream exchange waiting for its answer', () => {
  it('is closed at the upstream when its ticket is revoked, and the client is told why', async () => {
    const ticket = await gw.issue('tok', agent.ref, ['slow']);
    const arrival = nextArrival();
    const answer = send('/hold', ticket);
    await arrival;
    await gw.ctx.vault.revokeTicket(ticket, 'admin:test');
    expect(await within(held.at(-1)!.closed)).toBe('closed');
    const { status, body } = await answer;
    expect(status).toBeGreaterThanOrEqual(400);
    expect(body.error?.code).toBe('CC_ERR_TICKET_REVOKED');
    await gw.http.recorder.flush();
    const [latest] = await gw.ctx.store.listSessions({ limit: 1 });
    expect(latest?.outcome).toBe('CC_ERR_TICKET_REVOKED');
  });

  it('is closed at the upstream when its agent is revoked', async () => {
    const other = await gw.createAgent('revoked-later');
    const ticket = await gw.issue('tok', other.ref, ['slow']);
    const arrival = nextArrival();
    const answer = send('/hold-agent', ticket, other.key);
    await arrival;
    await gw.ctx.agents.revoke('revoked-later', 'admin:test');
    expect(await within(held.at(-1)!.closed)).toBe('closed');
    expect((await answer).body.error?.code).toBe('CC_ERR_AGENT_REVOKED');
  });

  it('is closed at the upstream when its client goes away', async () => {
    const ticket = await gw.issue('tok', agent.ref, ['slow']);
    const arrival = nextArrival();
    const url = new URL(gw.url);
    const client = connect(Number(url.port), url.hostname, () =>
      client.write(
        `GET /c/slow/hold-gone HTTP/1.1\r\nhost: ${url.host}\r\nproxy-authorization: Bearer ${agent.key}\r\nauthorization: Bearer ${ticket}\r\n\r\n`,
      ),
    );
    client.on('error', () => undefined);
    await arrival;
    client.destroy();
    expect(await within(held.at(-1)!.closed)).toBe('closed');
  });

  it('is left alone by a revocation that ends another session, and by exchanges that finished', async () => {
    // A finished exchange released its links: revoking its ticket later must not reach into
    // a new one (a leaked listener would abort whatever the session object was reused for).
    const done = await gw.issue('tok', agent.ref, ['slow']);
    up.handle('/quick', (_req, res) => res.end('{"ok":true}'));
    for (let i = 0; i < 3; i++) expect((await send('/quick', done)).status).toBe(200);
    const mine = await gw.issue('tok', agent.ref, ['slow']);
    const arrival = nextArrival();
    const answer = send('/hold-many', mine);
    await arrival;
    await gw.ctx.vault.revokeTicket(done, 'admin:test');
    expect(await within(held.at(-1)!.closed, 300)).toBe('still open');
    await gw.ctx.vault.revokeTicket(mine, 'admin:test');
    expect(await within(held.at(-1)!.closed)).toBe('closed');
    expect((await answer).body.error?.code).toBe('CC_ERR_TICKET_REVOKED');
  });

  it('is closed at the model provider when the agent of a model call is revoked', async () => {
    const caller = await gw.createAgent('model-caller');
    const arrival = nextArrival();
    const answer = request(`${gw.url}/llm/model/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${caller.key}` },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hello' }] }),
    }).then(async (res) => {
      const text = await res.body.text();
      answers.push(text);
      return { status: res.statusCode, body: JSON.parse(text) as { error?: { code?: string } } };
    });
    await arrival;
    await gw.ctx.agents.revoke('model-caller', 'admin:test');
    expect(await within(held.at(-1)!.closed)).toBe('closed');
    expect((await answer).body.error?.code).toBe('CC_ERR_AGENT_REVOKED');
  });

  it('leaves the secret and the tickets out of logs, audit, recordings, metrics and answers', async () => {
    // Runs last: every abort above (revocations, a client gone, a model call) has been logged,
    // audited and recorded by now.
    await gw.http.recorder.flush();
    // The control: the secret did travel, to the upstream only.
    expect(up.received.some((r) => r.headers.authorization === `Bearer ${SECRET}`)).toBe(true);
    const places = {
      logs: gw.logs(),
      audit: JSON.stringify(await gw.ctx.store.readAudit(0, 10_000)),
      recordings: JSON.stringify(await gw.ctx.store.listSessions({ limit: 1000 })),
      metrics: await gw.ctx.metrics.metrics(),
      answers: answers.join('\n'),
    };
    for (const [place, text] of Object.entries(places)) {
      expect(text.includes(SECRET), `${place} holds the secret`).toBe(false);
      expect(text.includes(Buffer.from(SECRET).toString('base64')), `${place} holds it in base64`).toBe(
        false,
      );
      expect(/cct_[0-9A-Za-z]{28}/.test(text), `${place} holds a ticket`).toBe(false);
    }
    expect(answers.length).toBeGreaterThanOrEqual(4);
    expect(places.recordings).toContain('CC_ERR_TICKET_REVOKED');
  });
});
