import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildPatterns, MIN_SCANNED_SECRET_BYTES, PatternScan } from './inspector.js';

const SECRET = Buffer.from('s3cr3t/value+with"quote');
const TICKET = 'cct_AAAAAAAAAAAAAAAAAAAAAA000000';

function scanner(secrets = [{ id: 'sec_1', value: SECRET }]) {
  const reissued: string[] = [];
  const scan = new PatternScan(buildPatterns(secrets), {
    async reissue(secretId) {
      reissued.push(secretId);
      return TICKET;
    },
  });
  return { scan, reissued };
}

async function runSplit(input: Buffer, cuts: number[]): Promise<Buffer> {
  const { scan } = scanner();
  const out: Buffer[] = [];
  let at = 0;
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    out.push(await scan.push(input.subarray(at, cut)));
    at = cut;
  }
  out.push(await scan.push(input.subarray(at)));
  out.push(await scan.end());
  return Buffer.concat(out);
}

const encodings = (v: Buffer) => {
  const text = v.toString('utf8');
  return [
    v.toString('latin1'),
    JSON.stringify(text).slice(1, -1),
    JSON.stringify(text).slice(1, -1).replace(/\//g, '\\/'),
    encodeURIComponent(text),
    v.toString('base64'),
    v.toString('base64url'),
  ];
};

describe('PatternScan', () => {
  it('replaces the secret in every encoding, once per secret reissued', async () => {
    const { scan, reissued } = scanner();
    const body = Buffer.from(
      `plain ${SECRET} json ${JSON.stringify({ k: SECRET.toString() })} url ?t=${encodeURIComponent(SECRET.toString())} b64 ${SECRET.toString('base64')} basic ${Buffer.from(`user:${SECRET}`).toString('base64')}`,
    );
    const out = Buffer.concat([await scan.push(body), await scan.end()]).toString('latin1');
    for (const form of encodings(SECRET)) expect(out).not.toContain(form);
    expect(out).not.toContain(Buffer.from(`user:${SECRET}`).toString('base64'));
    expect(out).toContain(`plain ${TICKET} json`);
    expect(out).toContain(`{"k":"${TICKET}"}`);
    const words = out.split(' ');
    const decode = (after: string) =>
      Buffer.from(words[words.indexOf(after) + 1]!, 'base64').toString('latin1');
    expect(decode('b64')).toContain(TICKET);
    expect(decode('basic')).toMatch(new RegExp(`^user:.${TICKET} `));
    expect(reissued).toEqual(['sec_1']);
    expect(scan.findings.get('sec_1')).toBe(5);
  });

  it('gives the same output however the body is split into chunks', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.constantFrom(...encodings(SECRET), 'x', '\n\n', 'data: ', SECRET.toString().slice(0, 5)),
          {
            maxLength: 12,
          },
        ),
        fc.array(fc.nat(), { maxLength: 8 }),
        async (parts, rawCuts) => {
          const input = Buffer.from(parts.join(''), 'latin1');
          const cuts = rawCuts.map((c) => (input.length === 0 ? 0 : c % input.length));
          const whole = await runSplit(input, []);
          const split = await runSplit(input, cuts);
          expect(split.equals(whole)).toBe(true);
          for (const form of encodings(SECRET)) expect(whole.toString('latin1')).not.toContain(form);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('holds back only a possible match prefix, so streams are not delayed', async () => {
    const { scan } = scanner();
    expect((await scan.push(Buffer.from('data: hello\n\n'))).toString()).toBe('data: hello\n\n');
    expect((await scan.push(Buffer.from('data: s3cr'))).toString()).toBe('data: ');
    expect((await scan.push(Buffer.from('3t/value+with"quote!\n\n'))).toString()).toBe(`${TICKET}!\n\n`);
    expect((await scan.end()).length).toBe(0);
  });

  it('ignores secrets too short to scan for', async () => {
    const short = Buffer.from('abc'.slice(0, MIN_SCANNED_SECRET_BYTES - 1));
    expect(buildPatterns([{ id: 'sec_s', value: short }]).patterns).toEqual([]);
  });
});
