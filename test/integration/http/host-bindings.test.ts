import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostBindings, type HostBindings } from '../../../src/frontends/http/host-bindings.js';
import type { SecretView } from '../../../src/vault/model.js';
import { type Gateway, startGateway } from './harness.js';

// The forward proxy's host index against a real vault, store and connections (SQLite):
// what a secret's destinations and an http connection bind, kept current from the change
// feed without reading the whole vault again on every change.

let gw: Gateway;
let bindings: HostBindings;
/** How often the whole list of secrets was read. */
let fullReads = 0;

beforeAll(async () => {
  gw = await startGateway();
  const vault = {
    listSecrets: async (): Promise<SecretView[]> => {
      fullReads++;
      return gw.ctx.vault.listSecrets();
    },
  };
  bindings = createHostBindings(vault, gw.ctx.connections, gw.ctx.store, { ttlMs: 1 });
  await gw.addSecret('api', 'host-binding-canary-1', ['api.example.com', '*.corp.example:8443']);
}, 60_000);

afterAll(async () => {
  bindings?.close();
  await gw?.close();
});

const bound = async (host: string, port: number, scheme: 'http' | 'https' = 'https') =>
  (await bindings.resolve(host, port, scheme)).bound;

describe('forward proxy host bindings', () => {
  it('binds exactly the scheme, host and port a secret names; a wildcard covers names below it only', async () => {
    expect(await bound('api.example.com', 443)).toBe(true);
    expect(await bound('API.Example.com.', 443)).toBe(true);
    expect(await bound('api.example.com', 80, 'http')).toBe(false);
    expect(await bound('api.example.com', 8443)).toBe(false);
    expect(await bound('example.com', 443)).toBe(false);
    expect(await bound('x.api.example.com', 443)).toBe(false);
    expect(await bound('a.corp.example', 8443)).toBe(true);
    expect(await bound('a.b.corp.example', 8443)).toBe(true);
    expect(await bound('corp.example', 8443)).toBe(false);
    expect(await bound('a.corp.example', 443)).toBe(false);
    expect(await bound('evilcorp.example', 8443)).toBe(false);
  });

  it('sees an added, changed and removed secret at once, reading only that secret', async () => {
    await bound('api.example.com', 443);
    const before = fullReads;
    await gw.addSecret('billing', 'host-binding-canary-2', ['billing.example.net']);
    expect(await bound('billing.example.net', 443)).toBe(true);
    await gw.ctx.vault.updateSecret('billing', { allow: ['billing2.example.net'] }, 'admin:test');
    expect(await bound('billing.example.net', 443)).toBe(false);
    expect(await bound('billing2.example.net', 443)).toBe(true);
    await gw.ctx.vault.removeSecret('billing', 'admin:test');
    expect(await bound('billing2.example.net', 443)).toBe(false);
    // Two secrets naming one host: removing one leaves it bound.
    await gw.addSecret('twin-a', 'host-binding-canary-3', ['twin.example.org']);
    await gw.addSecret('twin-b', 'host-binding-canary-4', ['twin.example.org']);
    await gw.ctx.vault.removeSecret('twin-a', 'admin:test');
    expect(await bound('twin.example.org', 443)).toBe(true);
    await gw.ctx.vault.removeSecret('twin-b', 'admin:test');
    expect(await bound('twin.example.org', 443)).toBe(false);
    expect(fullReads).toBe(before);
  });

  it('reads nothing again for revocations and other changes that bind no host', async () => {
    const agent = await gw.createAgent(`h-${Date.now()}`);
    await bound('api.example.com', 443);
    const before = fullReads;
    for (let i = 0; i < 5; i++) {
      const ticket = await gw.issue('api', agent.ref, ['api.example.com']);
      await gw.ctx.vault.revokeTicket(ticket, 'admin:test');
      expect(await bound('api.example.com', 443)).toBe(true);
    }
    expect(fullReads).toBe(before);
  });

  it('finds an http connection by its URL and forgets it when it is removed', async () => {
    await gw.addConnection('inventory', 'http://inventory.internal:8080');
    const found = await bindings.resolve('inventory.internal', 8080, 'http');
    expect(found).toMatchObject({ bound: true, connection: { name: 'inventory' } });
    expect((await bindings.resolve('inventory.internal', 8080, 'https')).bound).toBe(false);
    await gw.ctx.connections.remove('inventory', 'admin:test');
    expect(await bindings.resolve('inventory.internal', 8080, 'http')).toEqual({
      bound: false,
      connection: null,
    });
  });

  it('reads everything again after a resync (changes elsewhere may have been missed)', async () => {
    await bound('api.example.com', 443);
    const before = fullReads;
    await gw.ctx.store.publish({ type: 'resync' });
    expect(await bound('api.example.com', 443)).toBe(true);
    expect(fullReads).toBe(before + 1);
  });
});
