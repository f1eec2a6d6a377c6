import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  closeSharedKnownSecretIndex,
  currentSecretMatcher,
  sharedKnownSecretIndex,
} from '../../src/gateway/known-secret-index.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-foreign-Vb4Nq8Kx2';

// A change committed to the SQLite store by another process (the CLI writing directly
// while a server runs) must reach the server's caches at once, not when they expire.
describe('changes committed by another process', () => {
  let t: TestHome;
  let server: Context;
  let other: Context;
  beforeEach(async () => {
    t = await makeTestHome();
    server = await t.open();
    other = await t.open();
  });
  afterEach(async () => {
    await server.close();
    await other.close();
    t.remove();
  });

  async function setUp() {
    await server.vault.addSecret({ name: 's', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
    const agent = await server.agents.create({ name: 'a' }, 'admin:test');
    const principal = await server.agents.authenticate(agent.key);
    const issued = await server.vault.issueTicket({ secret: 's', principal: principal.ref }, 'admin:test');
    // Warm the server's caches.
    await server.vault.exchange(issued.ticket, { principal, target: { connection: 'svc' } });
    return { agent, principal, ...issued };
  }

  const settle = () => new Promise((resolve) => setTimeout(resolve, 350));

  it('a ticket revoked by another process is refused by the server within a poll interval', async () => {
    const { ticket, view, principal } = await setUp();
    await other.vault.revokeTicket(view.id, 'admin:cli');
    await settle();
    await expect(
      server.vault.exchange(ticket, { principal, target: { connection: 'svc' } }),
    ).rejects.toMatchObject({ code: 'CC_ERR_TICKET_REVOKED' });
  });

  it('an agent revoked by another process can no longer authenticate on the server', async () => {
    const { agent } = await setUp();
    await other.agents.revoke('a', 'admin:cli');
    await settle();
    await expect(server.agents.authenticate(agent.key)).rejects.toMatchObject({
      code: 'CC_ERR_AGENT_REVOKED',
    });
  });

  it('a secret erased by another process is no longer released by the server', async () => {
    const { ticket, principal } = await setUp();
    await other.vault.removeSecret('s', 'admin:cli', { force: true });
    await settle();
    await expect(
      server.vault.exchange(ticket, { principal, target: { connection: 'svc' } }),
    ).rejects.toBeDefined();
  });

  it('the server’s own commits do not look foreign (no resync storm)', async () => {
    await setUp();
    const seen: string[] = [];
    const off = server.store.subscribe((change) => seen.push(change.type));
    await server.agents.create({ name: 'b' }, 'admin:test');
    await settle();
    off();
    expect(seen).not.toContain('resync');
  });

  // The change log (ADR 0031): another process's change is heard as that change, so the
  // server applies it alone instead of reloading every secret (at 100k secrets a reload
  // decrypts all of them); a commit with no change (a ticket issued, audit) costs nothing.
  it('a secret added by another process reaches the server’s known-secret index without a full reload', async () => {
    await server.vault.addSecret({ name: 'first', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
    let fullReads = 0;
    const read = server.vault.knownSecrets.bind(server.vault);
    server.vault.knownSecrets = async () => {
      fullReads++;
      return read();
    };
    try {
      const index = sharedKnownSecretIndex(server.vault, server.store);
      const matcher = await currentSecretMatcher(index);
      expect(fullReads).toBe(1); // the first load
      const added = await other.vault.addSecret(
        { name: 'second', value: Buffer.from(`${CANARY}-second`), allow: ['svc'] },
        'admin:cli',
      );
      // Commits that carry no change: a ticket issued, audit records.
      const agent = await other.agents.create({ name: 'quiet' }, 'admin:cli');
      const principal = await other.agents.authenticate(agent.key);
      await other.vault.issueTicket({ secret: 'first', principal: principal.ref }, 'admin:cli');
      await currentSecretMatcher(index); // the feed check on the way delivers the change
      await index.settled();
      expect(matcher.has(added.id)).toBe(true);
      expect(fullReads).toBe(1);
      // The control: a change the log cannot replay exactly (a resync) does reload.
      await other.store.transaction(async (t) => t.notify({ type: 'resync' }));
      await currentSecretMatcher(index);
      await index.settled();
      expect(fullReads).toBe(2);
    } finally {
      closeSharedKnownSecretIndex(server.vault);
    }
  });

  it('a connection removed or replaced by another process is not served from the cache', async () => {
    await server.vault.addSecret(
      { name: 'k', value: Buffer.from(CANARY), allow: ['conn:api'] },
      'admin:test',
    );
    const add = (ctx: Context, url: string) =>
      ctx.connections.add({ name: 'api', type: 'http', url, credential: 'k' }, 'admin:test');
    await add(server, 'https://one.example.test');
    let reads = 0;
    const read = server.store.getConnection.bind(server.store);
    server.store.getConnection = async (name: string) => {
      reads++;
      return read(name);
    };
    expect((await server.connections.get('api'))?.url).toBe('https://one.example.test');
    expect((await server.connections.get('api'))?.url).toBe('https://one.example.test');
    expect(reads).toBe(1); // the second lookup came from the cache
    await other.connections.remove('api', 'admin:cli');
    await add(other, 'https://two.example.test');
    // No settle: the foreign commit is noticed on the cache hit itself (data_version).
    expect((await server.connections.get('api'))?.url).toBe('https://two.example.test');
    await other.connections.remove('api', 'admin:cli');
    expect(await server.connections.get('api')).toBeNull();
    // The server's own removal drops its entry at once, too.
    await add(server, 'https://three.example.test');
    expect((await server.connections.get('api'))?.url).toBe('https://three.example.test');
    await server.connections.remove('api', 'admin:test');
    expect(await server.connections.get('api')).toBeNull();
  });
});
