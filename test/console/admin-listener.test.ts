import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import { createLogger } from '../../src/core/logger.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const run = promisify(execFile);

/**
 * Item 8: the admin listener answers only to its configured Host names (a DNS rebinding
 * page cannot read /metrics or anything else), and a malformed path is a 400, not a 500.
 * Raw sockets send exactly the bytes under test; curl plays the browser-ish client.
 */

/** One raw HTTP/1.1 request; returns status, the error code header or body, and the body. */
function raw(port: number, head: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let data = '';
    socket.on('data', (chunk) => {
      data += chunk.toString('latin1');
    });
    socket.on('end', () => {
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(data)?.[1] ?? 0);
      resolve({ status, body: data.slice(data.indexOf('\r\n\r\n') + 4) });
    });
    socket.on('error', reject);
    socket.write(`${head}\r\nConnection: close\r\n\r\n`);
  });
}

describe('admin listener: Host names and paths', () => {
  let t: TestHome;
  let ctx: Context;
  let admin: AdminServer;
  let port: number;
  let configured: { t: TestHome; ctx: Context; admin: AdminServer; port: number };

  beforeAll(async () => {
    t = await makeTestHome();
    ctx = await t.open();
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, createLogger({ level: 'silent' }));
    port = Number(new URL(admin.url).port);
    const other = await makeTestHome();
    writeFileSync(
      other.home.configFile,
      'admin:\n  allowedHosts: [admin.example.test, "ops.example.test:8443"]\n',
    );
    const otherCtx = await other.open();
    const otherAdmin = await startAdminServer(
      otherCtx,
      { host: '127.0.0.1', port: 0 },
      createLogger({ level: 'silent' }),
    );
    configured = { t: other, ctx: otherCtx, admin: otherAdmin, port: Number(new URL(otherAdmin.url).port) };
  });
  afterAll(async () => {
    for (const c of [
      { a: admin, x: ctx, h: t },
      { a: configured.admin, x: configured.ctx, h: configured.t },
    ]) {
      await c.a?.close();
      await c.x?.close();
      c.h?.remove();
    }
  });

  it('the issue: a DNS-rebinding Host cannot read /metrics (421); the listen address can', async () => {
    const rebound = await run('curl', [
      '-s',
      '-i',
      '-H',
      `Host: attacker.example:${port}`,
      `${admin.url}/metrics`,
    ]);
    expect(rebound.stdout).toMatch(/^HTTP\/1\.1 421/);
    expect(rebound.stdout).toContain('CC_ERR_ADMIN_HOST_REFUSED');
    expect(rebound.stdout).not.toContain('coatcheck_');
    const own = await run('curl', ['-s', '-i', `${admin.url}/metrics`]);
    expect(own.stdout).toMatch(/^HTTP\/1\.1 200/);
  });

  it('Host variants: trailing dot, port, IP literals, IPv6, userinfo, no Host at all', async () => {
    const status = async (host: string | null, path = '/healthz') =>
      (await raw(port, `GET ${path} HTTP/1.1${host === null ? '' : `\r\nHost: ${host}`}`)).status;
    // Allowed by default: the listen address, localhost, 127.0.0.1 and [::1], any port; one trailing dot is the same name.
    expect(await status(`127.0.0.1:${port}`)).toBe(200);
    expect(await status('localhost')).toBe(200);
    expect(await status(`localhost.:${port}`)).toBe(200);
    expect(await status(`LOCALHOST:${port}`)).toBe(200);
    expect(await status(`[::1]:${port}`)).toBe(200);
    // Refused: other names and literals, a trailing dot on another name, look-alikes.
    for (const host of [
      'attacker.example',
      'attacker.example.',
      `attacker.example.:${port}`,
      '127.0.0.2',
      '0.0.0.0',
      '[::2]',
      '127.0.0.1.attacker.example',
      'localhost.attacker.example',
      `user@127.0.0.1:${port}`,
      '127.0.0.1:99999',
      '127.0.0.1..',
    ]) {
      expect({ host, status: await status(host) }).toEqual({ host, status: 421 });
    }
    // HTTP/1.0 without Host: refused too.
    expect((await raw(port, 'GET /healthz HTTP/1.0')).status).toBe(421);
    // The OpenAPI document and the console are behind the same check.
    expect(await status('attacker.example', '/v1/openapi.json')).toBe(421);
    expect(await status('attacker.example', '/console/')).toBe(421);
  });

  it('configured names replace the defaults; a name with a port matches only that port', async () => {
    const status = async (host: string) =>
      (await raw(configured.port, `GET /healthz HTTP/1.1\r\nHost: ${host}`)).status;
    expect(await status('admin.example.test')).toBe(200);
    expect(await status(`admin.example.test:${configured.port}`)).toBe(200);
    expect(await status('ops.example.test:8443')).toBe(200);
    expect(await status('ops.example.test:8444')).toBe(421);
    expect(await status('ops.example.test')).toBe(421);
    expect(await status(`127.0.0.1:${configured.port}`)).toBe(421);
  });

  it('malformed paths are 400 CC_ERR_ADMIN_BAD_PATH, not 500: %zz, a lone %, overlong UTF-8, truncated UTF-8', async () => {
    const auth = `Authorization: Bearer ${t.adminKey}`;
    for (const path of [
      '/v1/secrets/%zz',
      '/v1/approvals/%',
      '/v1/sessions/%C0%AF',
      '/v1/connections/%E0%80',
      '/v1/agents/%ED%A0%80/revoke',
      '/%',
      '/metrics%zz',
    ]) {
      const res = await raw(port, `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}`);
      expect({ path, status: res.status }).toEqual({ path, status: 400 });
      expect(JSON.parse(res.body).error.code).toBe('CC_ERR_ADMIN_BAD_PATH');
    }
    // A well-formed escape still routes.
    const ok = await raw(port, `GET /v1/secrets/%6Eo-such HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}`);
    expect(ok.status).toBe(404);
    expect(JSON.parse(ok.body).error.code).toBe('CC_ERR_NOT_FOUND');
  });
});
