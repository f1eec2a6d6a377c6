import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { mintRelayKey } from '../core/ticket-format.js';
import { chainInspectors, createDetectorInspector } from './detector-inspector.js';
import type { InspectionContext, ResponseInspector } from './inspector.js';

// Built at run time: no secret-shaped literal in the repository.
const AWS = ['AKIA', 'Z7QW3RTY', 'UIOP2ASD'].join('');
const GH = `ghp_${'aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5'.slice(0, 36)}`;

function context(issued: string[]): InspectionContext {
  return {
    reissue: async (id) => `cct_known_${id}`,
    tokenize: async (value, kind) => {
      issued.push(`${kind}:${value.length}`);
      return `cct_found_${kind}`;
    },
  };
}

async function runThrough(
  inspector: ResponseInspector,
  body: Buffer,
  cuts: number[],
  issued: string[] = [],
): Promise<string> {
  const scan = await inspector.begin(context(issued));
  const parts: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, body.length]) {
    if (cut <= from) continue;
    parts.push(await scan.push(body.subarray(from, cut)));
    from = cut;
  }
  parts.push(await scan.end());
  return Buffer.concat(parts).toString('latin1');
}

describe('detector inspector', () => {
  const inspector = createDetectorInspector();

  it('replaces a coatcheck relay key (ccr_) in a response with a ticket, split at any point', async () => {
    const relayKey = mintRelayKey();
    const body = Buffer.from(`{"relay":{"name":"site-a","key":"${relayKey}"}}`);
    const at = body.indexOf(relayKey);
    for (const cuts of [[], [at + 2], [at + 20], [at + relayKey.length - 1]]) {
      const issued: string[] = [];
      const out = await runThrough(inspector, body, cuts, issued);
      expect(out).toBe('{"relay":{"name":"site-a","key":"cct_found_coatcheck-relay-key"}}');
      expect(issued).toEqual([`coatcheck-relay-key:${relayKey.length}`]);
    }
  });

  it('replaces secrets the vault does not know with tickets, in headers and bodies', async () => {
    const issued: string[] = [];
    const body = Buffer.from(
      JSON.stringify({ aws: AWS, note: 'nothing here', id: '3f2504e0-4f89-11d3-9a0c-0305e82c3301' }),
    );
    const out = await runThrough(inspector, body, [], issued);
    expect(out).toBe(
      JSON.stringify({
        aws: 'cct_found_aws-access-key',
        note: 'nothing here',
        id: '3f2504e0-4f89-11d3-9a0c-0305e82c3301',
      }),
    );
    expect(issued).toEqual(['aws-access-key:20']);
    const scan = await inspector.begin(context([]));
    expect(await scan.header(`token ${AWS}`)).toBe('token cct_found_aws-access-key');
    expect(scan.findings.get('aws-access-key')).toBe(1);
  });

  it('gives the same output for any split of the body into chunks', async () => {
    const text = `${'x'.repeat(300)}\nkey=${AWS} ${'y'.repeat(5000)}\n\ntoken: "${GH}"\n-----BEGIN NOTE-----\nid=${AWS}\n${'z'.repeat(200)}`;
    const body = Buffer.from(text);
    const whole = await runThrough(inspector, body, []);
    expect(whole).not.toContain(AWS);
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 0, max: body.length }), { maxLength: 8 }), async (cuts) => {
        const sorted = [...new Set(cuts)].sort((a, b) => a - b);
        expect(await runThrough(inspector, body, sorted)).toBe(whole);
      }),
      { numRuns: 40 },
    );
  });

  it('a long line in many small chunks (no line feed for 64 KiB and more) loses no secret and adds none', async () => {
    // Held lines are kept aside unscanned until a line feed or the 64 KiB limit: secrets
    // before, across and after that limit, and at chunk edges, must all still be found.
    const filler = (n: number) => 'q'.repeat(n);
    const text = `${filler(1000)} key=${AWS} ${filler(64 * 1024 - 1100)}token: "${GH}" ${filler(70_000)} id=${AWS} ${filler(300)}`;
    const body = Buffer.from(text);
    const whole = await runThrough(inspector, body, []);
    expect(whole).not.toContain(AWS);
    expect(whole).not.toContain(GH);
    expect(whole.split('cct_found_').length - 1).toBe(3);
    for (const size of [1024, 1500, 16 * 1024, 40_000]) {
      const cuts = Array.from({ length: Math.floor(body.length / size) }, (_, i) => (i + 1) * size);
      const issued: string[] = [];
      expect({ size, out: await runThrough(inspector, body, cuts, issued) }).toEqual({ size, out: whole });
      expect(issued).toHaveLength(3);
    }
    // Held no longer than the limit: a line without end still flows in 64 KiB steps.
    const scan = await inspector.begin(context([]));
    let released = 0;
    for (let i = 0; i < 100; i++) released += (await scan.push(Buffer.from(filler(1024)))).length;
    expect(released).toBeGreaterThan(100 * 1024 - 64 * 1024 - 1);
    // Chunks that each end mid-secret, around the limit.
    const at = body.indexOf(GH);
    expect(await runThrough(inspector, body, [at + 3, at + 10, at + 11, at + GH.length - 1])).toBe(whole);
  });

  it('releases complete lines at once, so event streams are not delayed', async () => {
    const scan = await inspector.begin(context([]));
    expect((await scan.push(Buffer.from('data: tick\n\n'))).toString()).toBe('data: tick\n\n');
    expect((await scan.push(Buffer.from(`data: ${AWS.slice(0, 9)}`))).toString()).toBe('');
    expect((await scan.push(Buffer.from(`${AWS.slice(9)}\n\n`))).toString()).toBe(
      'data: cct_found_aws-access-key\n\n',
    );
    expect((await scan.end()).length).toBe(0);
  });

  it('chained after the known-secret inspector, passes its output through unchanged where nothing is found', async () => {
    const chain = chainInspectors(createDetectorInspector(), createDetectorInspector());
    const body = Buffer.from(`plain text with no secrets, ${'a'.repeat(30_000)} end`);
    expect(await runThrough(chain, body, [10, 20_000])).toBe(body.toString('latin1'));
  });
});
