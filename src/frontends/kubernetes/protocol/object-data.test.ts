import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../../core/errors.js';
import { MASKED_DATA, rewriteObjectData } from './object-data.js';

const b64 = (text: string) => Buffer.from(text).toString('base64');
const SECRET = 's3cret-value-123';
const options = (mask: ((key: string) => boolean) | null = null) => ({
  scan: async (value: Buffer) => Buffer.from(value.toString('utf8').replaceAll(SECRET, 'TICKET')),
  // A keyword rule that would corrupt a base64 value under "password" if it were not pinned.
  scanText: async (text: string) =>
    text.replace(/"password":"[^"]*"/g, '"password":"WHOLE-SCAN"').replaceAll(SECRET, 'TICKET'),
  mask,
});

describe('Secret and ConfigMap base64 values', () => {
  it('decodes, scans and re-encodes Secret data; pinned maps survive the whole-text scan', async () => {
    const { text, result } = await rewriteObjectData(
      JSON.stringify({ kind: 'Secret', data: { password: b64(SECRET), user: b64('app') }, note: SECRET }),
      options(),
    );
    const object = JSON.parse(text);
    expect(Buffer.from(object.data.password, 'base64').toString()).toBe('TICKET');
    expect(Buffer.from(object.data.user, 'base64').toString()).toBe('app');
    expect(object.note).toBe('TICKET');
    expect(result).toEqual({ decoded: 2, rewritten: 1 });
  });

  it('list items take the list kind; an implied kind covers typed lists without one', async () => {
    const list = await rewriteObjectData(
      JSON.stringify({ kind: 'SecretList', items: [{ data: { a: b64(SECRET) } }] }),
      options(),
    );
    expect(Buffer.from(JSON.parse(list.text).items[0].data.a, 'base64').toString()).toBe('TICKET');
    const bare = await rewriteObjectData(JSON.stringify({ items: [{ data: { a: b64(SECRET) } }] }), {
      ...options(),
      listItemKind: 'Secret',
    });
    expect(Buffer.from(JSON.parse(bare.text).items[0].data.a, 'base64').toString()).toBe('TICKET');
  });

  it('rewrites watch events, Table rows, ConfigMap binaryData and the last-applied annotation', async () => {
    const applied = JSON.stringify({ kind: 'Secret', data: { password: b64(SECRET) } });
    const event = {
      type: 'ADDED',
      object: {
        kind: 'Secret',
        metadata: { annotations: { 'kubectl.kubernetes.io/last-applied-configuration': applied } },
        data: {},
      },
    };
    const out = JSON.parse((await rewriteObjectData(JSON.stringify(event), options())).text);
    const inner = JSON.parse(
      out.object.metadata.annotations['kubectl.kubernetes.io/last-applied-configuration'],
    );
    expect(Buffer.from(inner.data.password, 'base64').toString()).toBe('TICKET');
    const table = {
      kind: 'Table',
      rows: [{ object: { kind: 'ConfigMap', binaryData: { b: b64(SECRET) } } }],
    };
    const t = JSON.parse((await rewriteObjectData(JSON.stringify(table), options())).text);
    expect(Buffer.from(t.rows[0].object.binaryData.b, 'base64').toString()).toBe('TICKET');
  });

  it('masks named keys with a valid base64 placeholder (Secret) or the placeholder (ConfigMap data)', async () => {
    const mask = (key: string) => key === 'api-key';
    const s = JSON.parse(
      (
        await rewriteObjectData(
          JSON.stringify({ kind: 'Secret', data: { 'api-key': b64('x') } }),
          options(mask),
        )
      ).text,
    );
    expect(Buffer.from(s.data['api-key'], 'base64').toString()).toBe(MASKED_DATA);
    const c = JSON.parse(
      (
        await rewriteObjectData(
          JSON.stringify({ kind: 'ConfigMap', data: { 'api-key': 'x' } }),
          options(mask),
        )
      ).text,
    );
    expect(c.data['api-key']).toBe(MASKED_DATA);
  });

  it.each([
    ['not JSON', '{"kind":"Secret"'],
    ['not base64', JSON.stringify({ kind: 'Secret', data: { a: 'not base64!' } })],
    ['not a string', JSON.stringify({ kind: 'Secret', data: { a: 5 } })],
    ['too deep', `${'['.repeat(100)}${']'.repeat(100)}`],
  ])('withholds what it cannot read: %s', async (_name, text) => {
    const error = await rewriteObjectData(text, options()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CoatcheckError);
    expect((error as CoatcheckError).code).toBe('CC_ERR_K8S_RESPONSE_INVALID');
  });
});
