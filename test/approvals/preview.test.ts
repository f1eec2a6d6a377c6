import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Operation, operationFingerprint } from '../../src/approvals/approvals.js';
import { gate } from '../../src/approvals/gate.js';
import { boundPreview, createPreviewScrubber, MAX_PREVIEW_BYTES } from '../../src/approvals/preview.js';
import { renderApproval } from '../../src/cli/approvals.js';
import { agentRef, type Principal } from '../../src/core/principal.js';
import { SecretValue } from '../../src/core/secret-value.js';
import { BUILTIN_RULES } from '../../src/detect/rules/index.js';
import { httpPreview } from '../../src/frontends/http/approval-preview.js';
import { statementPreview } from '../../src/frontends/postgres/statement-policy.js';
import { currentKnownSecrets, sharedKnownSecretIndex } from '../../src/gateway/known-secret-index.js';
import type { Context } from '../../src/server/context.js';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * Issue 19 item 10: the preview approvers read is cleaned before it is kept (tickets by id,
 * vault secrets in any encoding and detector findings masked, coatcheck keys hidden),
 * bounded at 64 KiB, and never part of what the approval is bound to.
 */
const CANARY = `canary-preview-${Math.random().toString(36).slice(2)}-Zx9`;
const SHORT = 'pw7ab!'; // 6 bytes: below the detector's known-secret minimum, found by the raw patterns
const POLICY = `@id("writes-need-approval") @approval("required")
permit(principal, action == Action::"sql:write", resource == Connection::"orders");
`;

describe('approval previews', () => {
  let t: TestHome;
  let ctx: Context;
  let agent: Principal;
  let agentKey: string;
  let ticket: string;
  let ticketId: string;
  let secretId: string;

  beforeAll(async () => {
    t = await makeTestHome();
    writeFileSync(join(t.home.dir, 'policy.cedar'), POLICY);
    writeFileSync(t.home.configFile, 'policy:\n  path: policy.cedar\napprovals:\n  holdTimeout: 1s\n');
    ctx = await t.open();
    const created = await ctx.agents.create({ name: 'writer' }, 'admin:test');
    agentKey = created.key;
    agent = await ctx.agents.authenticate(created.key);
    secretId = (
      await ctx.vault.addSecret(
        { name: 'orders-pw', value: Buffer.from(CANARY), allow: ['orders'] },
        'admin:test',
      )
    ).id;
    await ctx.vault.addSecret({ name: 'tiny', value: Buffer.from(SHORT), allow: ['orders'] }, 'admin:test');
    const issued = await ctx.vault.issueTicket(
      { secret: 'orders-pw', principal: agentRef(created.agent.id) },
      'admin:test',
    );
    ticket = issued.ticket;
    ticketId = issued.view.id;
  });

  afterAll(async () => {
    await ctx?.close();
    t?.remove();
  });

  it.each([
    ['built from the list of secrets', () => createPreviewScrubber(ctx.vault)],
    [
      'on the shared index (the gateway)',
      () =>
        createPreviewScrubber(ctx.vault, () =>
          currentKnownSecrets(sharedKnownSecretIndex(ctx.vault, ctx.store)),
        ),
    ],
  ])(
    'shows tickets by id and masks secrets raw, escaped and encoded, findings and keys (%s)',
    async (_, make) => {
      const scrub = make();
      const raw = [
        `ticket=${ticket}`,
        `raw=${CANARY}`,
        `json=${JSON.stringify(CANARY).slice(1, -1).replace('c', '\\u0063')}`,
        `percent=${encodeURIComponent(CANARY).replace('a', '%61')}`,
        `base64=${Buffer.from(CANARY).toString('base64')}`,
        `short=${SHORT}`,
        'aws=AKIAZ7QWERTYUIOPASDF',
        `key=${agentKey}`,
        'forged=cct_AAAAAAAAAAAAAAAAAAAAAAAAAAAA',
      ].join('\n');
      const out = await scrub(raw);
      expect(out).toContain(`ticket=[ticket ${ticketId} for orders-pw]`);
      expect(out).toContain(`raw=[secret:${secretId}]`);
      expect(out).toContain('key=[coatcheck key]');
      expect(out).toMatch(/forged=\[ticket [0-9a-f]{12}\]/);
      expect(out).toMatch(/aws=\[REDACTED:[a-z0-9-]+\]/);
      for (const leak of [
        CANARY,
        ticket,
        agentKey,
        SHORT,
        'AKIAZ7QWERTYUIOPASDF',
        Buffer.from(CANARY).toString('base64'),
      ])
        expect(out).not.toContain(leak);
      expect(out).not.toContain('\\u0063anary-preview');
      expect(out).not.toMatch(/percent=.*canary/);
    },
  );

  it('on the shared index, masks a secret added after the first preview, and one changed, without rebuilding', async () => {
    const scrub = createPreviewScrubber(ctx.vault, () =>
      currentKnownSecrets(sharedKnownSecretIndex(ctx.vault, ctx.store)),
    );
    await scrub('warm');
    const later = `later-preview-canary-${Math.random().toString(36).slice(2)}-Qw3`;
    const added = await ctx.vault.addSecret(
      { name: 'later', value: Buffer.from(later), allow: ['orders'] },
      'admin:test',
    );
    const out = await scrub(`x=${later} y=${encodeURIComponent(later).replace('a', '%61')}`);
    expect(out).toBe(`x=[secret:${added.id}] y=[secret:${added.id}]`);
    await ctx.vault.removeSecret('later', 'admin:test');
    // Erased: no longer a live secret (the detector may still take it for one by its shape; it is not here).
    expect(await scrub(`x=${later}`)).toBe(`x=${later}`);
  });

  it('cleans the whole text before cutting it, so no cut leaves part of a secret', async () => {
    const scrub = createPreviewScrubber(ctx.vault);
    // The secret straddles the 64 KiB boundary.
    const raw = `${'a'.repeat(MAX_PREVIEW_BYTES - 10)}${CANARY}${'b'.repeat(1000)}`;
    const out = await scrub(raw);
    expect(Buffer.byteLength(out)).toBeLessThan(MAX_PREVIEW_BYTES + 100);
    expect(out).toMatch(/\n\[… truncated: \d+ more bytes not kept\]$/);
    expect(out).not.toContain(CANARY.slice(0, 8));
    // Cut on a character boundary: no broken UTF-8.
    const cut = boundPreview('é'.repeat(MAX_PREVIEW_BYTES));
    expect(cut).not.toContain('\ufffd');
    expect(cut.startsWith('é'.repeat(100))).toBe(true);
  });

  it('cleans a long text by its head only when no cut secret can reach the kept 64 KiB', async () => {
    const scrub = createPreviewScrubber(ctx.vault);
    const HEAD = 512 * 1024;
    // Plain text: the head is enough; the secret cut at its end lies far past what is kept.
    const plain = `${'lorem ipsum '.repeat(HEAD / 12 + 10).slice(0, HEAD - 10)}${CANARY}${'z'.repeat(8 * 1024 * 1024)}`;
    const out = await scrub(plain);
    expect(Buffer.byteLength(out)).toBeLessThan(MAX_PREVIEW_BYTES + 100);
    const left = Number(/truncated: (\d+) more bytes not kept\]$/.exec(out)?.[1]);
    expect(left).toBe(Buffer.byteLength(plain) - MAX_PREVIEW_BYTES);
    // A head that shrinks when cleaned (private keys become short masks) would bring the cut
    // secret into the kept text: then the whole text is cleaned, and the secret is masked.
    const key = BUILTIN_RULES.find((r) => r.id === 'ssh2-encrypted-private-key')!.examples.positives[0]!
      .secret;
    let shrinking = '';
    while (shrinking.length < HEAD - 2000) shrinking += `${key}\n`;
    shrinking = `${shrinking}${'.'.repeat(HEAD - 10 - shrinking.length)}${CANARY} and more`;
    const cleaned = await scrub(shrinking);
    expect(Buffer.byteLength(cleaned)).toBeLessThan(MAX_PREVIEW_BYTES);
    expect(cleaned).toContain(`[secret:${secretId}] and more`);
    expect(cleaned).not.toContain(CANARY.slice(0, 10));
  });

  it('builds HTTP and SQL previews with the whole request, leaving gateway credentials out', () => {
    const text = httpPreview({
      method: 'POST',
      url: `https://api.example/items?t=${ticket}`,
      rawHeaders: [
        'Host',
        'api.example',
        'Proxy-Authorization',
        `Bearer ${agentKey}`,
        'Authorization',
        `Bearer ${ticket}`,
        'X-Api-Key',
        'rawcredentialvalue1234',
        'Content-Type',
        'application/json',
      ],
      connectionHeader: undefined,
      contentEncoding: undefined,
      body: Buffer.from(`{"a":"${agentKey}"}`),
      injected: ['Authorization'],
      agentKey,
    });
    expect(text.split('\n')).toEqual([
      `POST https://api.example/items?t=${ticket}`,
      `Authorization: Bearer ${ticket}`,
      'X-Api-Key: [hidden: 22 characters]',
      'Content-Type: application/json',
      'Authorization: [added by the gateway from the connection]',
      '',
      '{"a":"[agent key]"}',
    ]);
    expect(
      httpPreview({
        method: 'PUT',
        url: 'https://x/',
        rawHeaders: [],
        connectionHeader: undefined,
        contentEncoding: 'gzip',
        body: Buffer.from([0x1f, 0x8b, 0]),
        injected: [],
        agentKey: null,
      }),
    ).toBe('PUT https://x/\n\n[body: 3 bytes, content-encoding gzip: not shown]');
    expect(statementPreview('UPDATE t SET a = $1 WHERE b = $2', ["it's", null])).toBe(
      "UPDATE t SET a = $1 WHERE b = $2\n-- parameters:\n--   $1 = 'it''s'\n--   $2 = NULL",
    );
  });

  it('keeps the preview beside the operation: not in its data, not in its fingerprint', async () => {
    const operation = (preview: string): Operation => ({
      kind: 'sql',
      connection: 'orders',
      action: 'sql:write',
      summary: 'DELETE FROM orders WHERE id = $1',
      detail: { statement: 'DELETE FROM orders WHERE id = $1', parameters: '["7"]' },
      preview: () => preview,
    });
    expect(operationFingerprint(agent.ref, operation('one'))).toBe(
      operationFingerprint(agent.ref, operation(`two ${CANARY}`)),
    );
    const held = (preview: string) =>
      gate(ctx.gate, {
        principal: agent,
        action: 'sql:write',
        resource: { type: 'Connection', id: 'orders' },
        context: {},
        operation: operation(preview),
      }).catch((e: { code?: string; details?: { approval?: string } }) => e);
    const first = (await held(`DELETE FROM orders WHERE id = 7 -- ${CANARY}`)) as {
      details: { approval: string };
    };
    const view = await ctx.approvals.get(first.details.approval);
    expect(view.preview).toBe(`DELETE FROM orders WHERE id = 7 -- [secret:${secretId}]`);
    expect(view.operation).not.toHaveProperty('preview');
    // The same operation with another preview text is the same request (bound by fingerprint).
    const again = (await held('something else entirely')) as { details: { approval: string } };
    expect(again.details.approval).toBe(first.details.approval);
    // Lists carry a short preview; show carries all of it.
    const long = (await gate(ctx.gate, {
      principal: agent,
      action: 'sql:write',
      resource: { type: 'Connection', id: 'orders' },
      context: {},
      operation: { ...operation('x'.repeat(2000)), detail: { statement: 'UPDATE orders SET x = 1' } },
    }).catch((e) => e)) as { details: { approval: string } };
    const listed = (await ctx.approvals.list()).find((a) => a.id === long.details.approval);
    expect(listed).toMatchObject({ preview: `${'x'.repeat(400)}…`, previewTruncated: true });
    expect(await ctx.approvals.get(long.details.approval)).toMatchObject({
      preview: 'x'.repeat(2000),
      previewTruncated: false,
    });
    // Nothing raw reached the store file.
    await ctx.audit.flush();
    const files = readdirSync(t.home.dir).filter((name) => /\.db(-wal)?$/.test(name));
    expect(files).toContain('coatcheck.db');
    for (const name of files) {
      expect(readFileSync(join(t.home.dir, name)).includes(Buffer.from(CANARY))).toBe(false);
    }
  });

  it('approvals show prints the preview with terminal control characters made visible', async () => {
    const held = (await gate(ctx.gate, {
      principal: agent,
      action: 'sql:write',
      resource: { type: 'Connection', id: 'orders' },
      context: {},
      operation: {
        kind: 'sql',
        connection: 'orders',
        action: 'sql:write',
        summary: 'UPDATE orders SET note = $1',
        detail: { statement: 'UPDATE orders SET note = $1' },
        preview: () =>
          `UPDATE orders SET note = $1\n-- parameters:\n--   $1 = '\u001b]52;c;evil\u0007 ${ticket}'`,
      },
    }).catch((e) => e)) as { details: { approval: string } };
    const text = renderApproval(await ctx.approvals.get(held.details.approval));
    expect(text).toContain('preview     (cleaned: tickets by id, secrets masked;');
    expect(text).toContain(`  --   $1 = '\\x1b]52;c;evil\\x07 [ticket ${ticketId} for orders-pw]'`);
    expect(text).not.toContain('\u001b');
    expect(text).not.toContain(ticket);
  });

  it('approvals show and list make control characters in the summary visible too (it holds agent text)', async () => {
    const summary = "UPDATE orders SET note = 'ok\r\u001b[2Kapproved by security\u009b31m'";
    const held = (await gate(ctx.gate, {
      principal: agent,
      action: 'sql:write',
      resource: { type: 'Connection', id: 'orders' },
      context: {},
      operation: {
        kind: 'sql',
        connection: 'orders',
        action: 'sql:write',
        summary,
        detail: { statement: summary },
        preview: () => summary,
      },
    }).catch((e) => e)) as { details: { approval: string } };
    const text = renderApproval(await ctx.approvals.get(held.details.approval));
    expect(text).toContain("UPDATE orders SET note = 'ok\\x0d\\x1b[2Kapproved by security\\x9b31m'");
    for (const control of ['\r', '\u001b', '\u009b']) expect(text).not.toContain(control);
    const listed = await cli(['approvals', 'list'], { env: { COATCHECK_HOME: t.home.dir } });
    expect(listed.stdout).toContain('\\x1b[2K');
    for (const control of ['\r', '\u001b', '\u009b']) expect(listed.stdout).not.toContain(control);
  });

  it('keeps no text when the preview cannot be cleaned (never the raw one)', async () => {
    const failing = createPreviewScrubber({
      knownSecrets: () => Promise.reject(new Error('vault down')),
      inspectTicket: () => Promise.reject(new Error('vault down')),
    });
    await expect(failing(CANARY)).rejects.toThrow('vault down');
    const held = await gate(ctx.gate, {
      principal: agent,
      action: 'sql:write',
      resource: { type: 'Connection', id: 'orders' },
      context: {},
      operation: {
        kind: 'sql',
        connection: 'orders',
        action: 'sql:write',
        summary: 'TRUNCATE orders',
        detail: { statement: 'TRUNCATE orders' },
        preview: () => {
          throw new Error(`builder failed near ${CANARY}`);
        },
      },
    }).catch((e: { details?: { approval?: string } }) => e);
    const view = await ctx.approvals.get((held as { details: { approval: string } }).details.approval);
    expect(view.preview).toBe('[preview unavailable: it could not be cleaned]');
  });

  it('a known secret too large for the matcher fails the cleaning instead of being left out', async () => {
    // Only a row the vault did not write can be this large (secret add refuses it).
    const large = Buffer.alloc(64 * 1024 + 1, 'y');
    const scrub = createPreviewScrubber({
      knownSecrets: async () => [{ id: 'sec_large', value: new SecretValue(large) }],
      inspectTicket: async () => ({ id: 'tkt_none', secret: null }),
    });
    await expect(scrub(`body=${large.toString('latin1')}`)).rejects.toMatchObject({
      code: 'CC_ERR_DETECT_KNOWN_SECRET_TOO_LARGE',
    });
    // A short one (under the matcher's floor) is still found by the raw patterns.
    const short = createPreviewScrubber({
      knownSecrets: async () => [{ id: 'sec_short', value: new SecretValue(Buffer.from('s3cr3tz')) }],
      inspectTicket: async () => ({ id: 'tkt_none', secret: null }),
    });
    expect(await short('x=s3cr3tz')).not.toContain('s3cr3tz');
  });
});
