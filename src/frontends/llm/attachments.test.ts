import { describe, expect, it } from 'vitest';
import { attachmentBytes } from './attachments.js';

const site = (key: string | number | null, parent: Record<string, unknown> | null = null) =>
  ({ key, parent, path: [] }) as unknown as Parameters<typeof attachmentBytes>[1];

describe('attachmentBytes', () => {
  const payload = Buffer.from('binary \x00\x01 password=hunter2-long-secret', 'latin1');

  it('decodes data URLs, Anthropic base64 sources and long bare base64', () => {
    expect(attachmentBytes(`data:image/png;base64,${payload.toString('base64')}`, site('url'))).toEqual(
      payload,
    );
    expect(
      attachmentBytes(
        payload.toString('base64'),
        site('data', { type: 'base64', media_type: 'application/pdf' }),
      ),
    ).toEqual(payload);
    const long = Buffer.alloc(300, 0x41);
    expect(attachmentBytes(long.toString('base64'), site('anything'))).toEqual(long);
    expect(attachmentBytes(long.toString('base64url'), site('anything'))).toEqual(long);
  });

  it('leaves text alone', () => {
    expect(attachmentBytes('hello world, this is a prompt', site('content'))).toBeNull();
    expect(attachmentBytes(payload.toString('base64'), site('content'))).toBeNull();
    expect(attachmentBytes(`${'word '.repeat(80)}`, site('content'))).toBeNull();
  });
});
