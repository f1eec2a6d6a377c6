import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { isTicket } from '../../../src/core/ticket-format.js';
import { CLUSTER_TOKEN, type K8sGateway, kubectlMissing, startK8sGateway } from './harness.js';

const VAULT_SECRET = 'db-password-canary-41c7e2f9aa03';
// A detector finding (an AWS access key id shape), split so this file holds no literal one.
const FOUND = ['AKIA', 'W4PLM7XQ', 'Z2RTN6BV'].join('');
const b64 = (text: string) => Buffer.from(text).toString('base64');
const unb64 = (text: string) => Buffer.from(text, 'base64').toString('utf8');

describe('Secrets and ConfigMaps through the Kubernetes front-end', () => {
  let gw: K8sGateway;
  let config: { file: string; ticket: string };
  const tls = new Agent({ connect: { rejectUnauthorized: false } });

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'k8s-secrets-'));
    const policyFile = join(dir, 'k8s.cedar');
    writeFileSync(
      policyFile,
      `@id("all") permit(principal, action, resource == Connection::"prod") unless { context has namespace && context.namespace == "masked" };
@id("masked") @mask("api-key") permit(principal, action, resource == Connection::"prod") when { context has namespace && context.namespace == "masked" };
`,
    );
    gw = await startK8sGateway({ extraConfig: `policy:\n  path: ${policyFile}\n` });
    await gw.ctx.vault.addSecret(
      { name: 'db-pass', value: Buffer.from(VAULT_SECRET), allow: ['conn:prod'] },
      'admin:test',
    );
    const secret = (namespace: string) => ({
      metadata: {
        name: 'db',
        namespace,
        annotations: {
          'kubectl.kubernetes.io/last-applied-configuration': JSON.stringify({
            apiVersion: 'v1',
            kind: 'Secret',
            metadata: { name: 'db', namespace },
            data: { password: b64(VAULT_SECRET) },
          }),
        },
      },
      type: 'Opaque',
      data: {
        password: b64(VAULT_SECRET),
        'aws-key': b64(`id=${FOUND}\n`),
        user: b64('app'),
        'api-key': b64('plain-but-masked'),
      },
    });
    gw.api.put('secrets', secret('default'));
    gw.api.put('secrets', secret('masked'));
    gw.api.put('configmaps', {
      metadata: { name: 'settings', namespace: 'default' },
      data: { 'db.conf': `password=${VAULT_SECRET}\n`, mode: 'fast' },
      binaryData: { blob: b64(`token ${VAULT_SECRET}`) },
    });
    config = await gw.kubeconfig('builder');
  });
  afterAll(async () => {
    await gw?.close();
    await tls.close();
  });

  const get = async (path: string) => {
    const res = await request(`${gw.k8s.url}/k8s/builder/prod${path}`, {
      headers: { authorization: `Bearer ${config.ticket}` },
      dispatcher: tls,
    });
    return { status: res.statusCode, text: await res.body.text() };
  };

  const assertClean = (text: string) => {
    expect(text).not.toContain(VAULT_SECRET);
    expect(text).not.toContain(b64(VAULT_SECRET));
    expect(text).not.toContain(FOUND);
    expect(text).not.toContain(b64(`id=${FOUND}\n`));
    expect(text).not.toContain(CLUSTER_TOKEN);
  };

  it.skipIf(kubectlMissing !== null)(
    'kubectl get secret -o yaml: vault secrets and findings come back as tickets, re-encoded; the object stays valid',
    async () => {
      const r = await gw.kubectl(config.file, ['get', 'secret', 'db', '-o', 'yaml']);
      expect(r.stderr).toBe('');
      assertClean(r.stdout);
      const object = parse(r.stdout) as {
        kind: string;
        data: Record<string, string>;
        metadata: { annotations: Record<string, string> };
      };
      expect(object.kind).toBe('Secret');
      const password = unb64(object.data.password!);
      expect(isTicket(password)).toBe(true);
      expect(unb64(object.data.user!)).toBe('app');
      const aws = unb64(object.data['aws-key']!);
      expect(aws).toMatch(/^id=cct_[0-9A-Za-z]{28}\n$/);
      const applied = JSON.parse(
        object.metadata.annotations['kubectl.kubernetes.io/last-applied-configuration']!,
      );
      expect(isTicket(unb64(applied.data.password))).toBe(true);
      // The ticket is usable: bound to this agent and connection, it exchanges for the vault secret.
      const inspected = await gw.ctx.vault.inspectTicket(password);
      expect(inspected.destinations).toEqual(['conn:prod']);
    },
  );

  it('a list of Secrets (items without kind), a ConfigMap and its binaryData are rewritten too', async () => {
    const list = await get('/api/v1/namespaces/default/secrets');
    expect(list.status).toBe(200);
    assertClean(list.text);
    const items = JSON.parse(list.text).items as Array<{ data: Record<string, string> }>;
    expect(isTicket(unb64(items[0]!.data.password!))).toBe(true);
    const cm = await get('/api/v1/namespaces/default/configmaps/settings');
    assertClean(cm.text);
    const parsed = JSON.parse(cm.text);
    expect(parsed.data['db.conf']).toMatch(/^password=cct_[0-9A-Za-z]{28}\n$/);
    expect(parsed.data.mode).toBe('fast');
    expect(unb64(parsed.binaryData.blob)).toMatch(/^token cct_[0-9A-Za-z]{28}$/);
  });

  it('policy @mask masks the named data keys with a valid base64 placeholder', async () => {
    const r = await get('/api/v1/namespaces/masked/secrets/db');
    assertClean(r.text);
    const data = JSON.parse(r.text).data;
    expect(unb64(data['api-key'])).toBe('[masked by coatcheck]');
    expect(isTicket(unb64(data.password))).toBe(true);
  });

  it('a watch on Secrets streams each event rewritten, as it happens', async () => {
    const res = await request(`${gw.k8s.url}/k8s/builder/prod/api/v1/namespaces/default/secrets?watch=true`, {
      headers: { authorization: `Bearer ${config.ticket}` },
      dispatcher: tls,
    });
    expect(res.statusCode).toBe(200);
    const lines: string[] = [];
    let buffer = '';
    const reader = (async () => {
      for await (const chunk of res.body) {
        buffer += (chunk as Buffer).toString('utf8');
        let nl = buffer.indexOf('\n');
        while (nl !== -1) {
          lines.push(buffer.slice(0, nl));
          buffer = buffer.slice(nl + 1);
          nl = buffer.indexOf('\n');
        }
      }
    })();
    await expect.poll(() => lines.length, { timeout: 10_000 }).toBe(1);
    gw.api.put('secrets', {
      metadata: { name: 'db', namespace: 'default' },
      data: { password: b64(`${VAULT_SECRET}`) },
    });
    await expect.poll(() => lines.length, { timeout: 10_000 }).toBe(2);
    for (const line of lines) assertClean(line);
    const event = JSON.parse(lines[1]!);
    expect(event.type).toBe('MODIFIED');
    expect(isTicket(unb64(event.object.data.password))).toBe(true);
    res.body.destroy();
    await reader.catch(() => undefined);
    await expect.poll(() => gw.api.watches(), { timeout: 10_000 }).toBe(0);
  });

  it('a Secret value that is not base64 is withheld, not passed', async () => {
    gw.api.put('secrets', {
      metadata: { name: 'broken', namespace: 'default' },
      data: { password: `${VAULT_SECRET}!` },
    });
    const r = await get('/api/v1/namespaces/default/secrets/broken');
    expect(r.status).toBe(502);
    expect(JSON.parse(r.text).details.causes[0].reason).toBe('CC_ERR_K8S_RESPONSE_INVALID');
    assertClean(r.text);
  });
});
