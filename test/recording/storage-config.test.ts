import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load-config.js';
import { accessKeyFromEnv, parseAccessKey } from '../../src/recording/storage-s3.js';

const s3 = (fields: string) =>
  `recording:\n  storage:\n    kind: s3\n${fields
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n')}\n`;

describe('recording.storage: the S3 settings are checked when the config is read', () => {
  it('accepts a complete S3 section and defaults to files', async () => {
    expect((await parseConfig('', 'c.yaml', {})).recording.storage).toEqual({ kind: 'file' });
    const c = (
      await parseConfig(
        s3(
          'endpoint: http://127.0.0.1:9000\nbucket: coatcheck-rec\nprefix: gw1/rec/\ncredentials:\n  secret: s3-key',
        ),
        'c.yaml',
        {},
      )
    ).recording.storage;
    expect(c).toEqual({
      kind: 's3',
      endpoint: 'http://127.0.0.1:9000',
      bucket: 'coatcheck-rec',
      region: 'us-east-1',
      prefix: 'gw1/rec/',
      forcePathStyle: true,
      credentials: { secret: 's3-key' },
      timeoutMs: 30_000,
    });
  });

  for (const [what, fields] of [
    ['a prefix leaving its folder', 'bucket: b-rec\nprefix: ../other/\ncredentials:\n  env: true'],
    ['a prefix not ending in /', 'bucket: b-rec\nprefix: gw1\ncredentials:\n  env: true'],
    ['an absolute prefix', 'bucket: b-rec\nprefix: /gw1/\ncredentials:\n  env: true'],
    ['no credentials', 'bucket: b-rec'],
    ['an inline key', 'bucket: b-rec\ncredentials:\n  accessKeyId: AKIA\n  secretAccessKey: x'],
    ['a bucket name with a slash', 'bucket: b/rec\ncredentials:\n  env: true'],
    ['a file: endpoint', 'endpoint: file:///etc\nbucket: b-rec\ncredentials:\n  env: true'],
  ] as const) {
    it(`refuses ${what}`, async () => {
      await expect(parseConfig(s3(fields), 'c.yaml', {})).rejects.toThrow(/recording\.storage/);
    });
  }

  it('reads the access key from a secret (JSON) or the environment; errors never hold the key', () => {
    const key = 'wJalrXUtnFEMI-canary-K7MDENG';
    expect(
      parseAccessKey('s3-key', Buffer.from(JSON.stringify({ accessKeyId: 'AK', secretAccessKey: key }))),
    ).toEqual({
      accessKeyId: 'AK',
      secretAccessKey: key,
      sessionToken: undefined,
    });
    for (const bad of [
      key,
      JSON.stringify({ accessKeyId: 'AK' }),
      JSON.stringify({ accessKeyId: 'AK', secretAccessKey: 7, x: key }),
    ]) {
      let message = '';
      try {
        parseAccessKey('s3-key', Buffer.from(bad));
      } catch (error) {
        message = `${(error as Error).message} ${JSON.stringify(error)}`;
      }
      expect(message).toContain('CC_ERR_RECORDING_STORAGE');
      expect(message).toContain('s3-key');
      expect(message).not.toContain(key);
    }
    expect(accessKeyFromEnv({ AWS_ACCESS_KEY_ID: 'AK', AWS_SECRET_ACCESS_KEY: key }).secretAccessKey).toBe(
      key,
    );
    expect(() => accessKeyFromEnv({ AWS_ACCESS_KEY_ID: 'AK' })).toThrow(/AWS_SECRET_ACCESS_KEY/);
  });
});
