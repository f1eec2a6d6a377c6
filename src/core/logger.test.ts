import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from './logger.js';

function sink(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  let out = '';
  stream.on('data', (chunk: Buffer) => {
    out += chunk.toString('utf8');
  });
  return { stream, text: () => out };
}

const settle = () => new Promise((r) => setTimeout(r, 30));

describe('the logger with a scrubber made on first use', () => {
  it('holds every line until the scrubber exists, then writes them scrubbed and in order', async () => {
    const out = sink();
    let release!: () => void;
    const ready = new Promise<void>((r) => {
      release = r;
    });
    let made = 0;
    const log = createLogger({
      level: 'info',
      destination: out.stream,
      loadScrub: async () => {
        made++;
        await ready;
        return (line) => line.replaceAll('CANARY-S3CRET', '[masked]');
      },
    });
    log.info({ n: 1 }, 'first CANARY-S3CRET');
    log.info({ n: 2 }, 'second CANARY-S3CRET');
    await settle();
    expect(out.text()).toBe(''); // nothing written unscrubbed while the scrubber loads
    release();
    await settle();
    log.info({ n: 3 }, 'third CANARY-S3CRET');
    await settle();
    const lines = out
      .text()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { n: number; msg: string });
    expect(lines.map((l) => l.n)).toEqual([1, 2, 3]);
    expect(out.text()).not.toContain('CANARY-S3CRET');
    expect(made).toBe(1);
  });

  it('withholds lines (never writes them raw) when the scrubber cannot be made', async () => {
    const out = sink();
    const log = createLogger({
      level: 'info',
      destination: out.stream,
      loadScrub: async () => {
        throw new Error('detector failed to load');
      },
    });
    log.error('CANARY-S3CRET in an error line');
    log.info('another CANARY-S3CRET');
    await settle();
    expect(out.text()).not.toContain('CANARY-S3CRET');
    expect(out.text().trim().split('\n')).toHaveLength(2);
    expect(out.text()).toContain('log line withheld');
  });
});
