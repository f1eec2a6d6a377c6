import { randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { mintAgentKey, mintRelayKey, mintSubtaskKey, mintTicket } from '../core/ticket-format.js';
import { createDetector } from './detector.js';
import { createLogScrubber, createScrubTransform, scrubText, tokenizeText, WITHHELD } from './scrub.js';
import { ALNUM, BASE32_UPPER, createRng } from './synth.js';
import { withBase62Crc32 } from './validators.js';

const rng = createRng('scrub');
const aws = `AKIA${rng.chars(BASE32_UPPER, 16)}`;
const gh = withBase62Crc32('ghp_', rng.chars(ALNUM, 30));
const detector = createDetector();

describe('scrubText', () => {
  it('masks each finding with its rule id', () => {
    expect(scrubText(`a=${aws} b=${gh}`, { detector })).toBe(
      'a=[REDACTED:aws-access-key] b=[REDACTED:github-pat-classic]',
    );
  });

  it('leaves clean text alone', () => {
    expect(scrubText('nothing to see', { detector })).toBe('nothing to see');
  });
});

describe('tokenizeText', () => {
  it('replaces each finding with what the callback returns and hands it the value', async () => {
    const seen: string[] = [];
    const out = await tokenizeText(
      `x ${aws} y ${gh}`,
      (f, value) => {
        seen.push(value);
        return `<ticket:${f.ruleId}>`;
      },
      { detector },
    );
    expect(out.text).toBe('x <ticket:aws-access-key> y <ticket:github-pat-classic>');
    expect(seen).toEqual([aws, gh]);
    expect(out.findings.map((f) => f.ruleId)).toEqual(['aws-access-key', 'github-pat-classic']);
  });

  it('fails closed when the callback fails, naming rule and fingerprint only', async () => {
    const err = await tokenizeText(`k=${aws}`, () => Promise.reject(new Error('vault down')), {
      detector,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'CC_ERR_DETECT_TOKENIZE_FAILED' });
    const fp = detector.scan(`k=${aws}`)[0]!.fingerprint;
    expect((err as Error).message).toBe(`tokenize failed for a aws-access-key finding (fingerprint ${fp})`);
    expect((err as Error).message).not.toContain(aws);
  });
});

describe('createLogScrubber', () => {
  it('masks a relay key (ccr_) in a log line, and tells it from an agent key', () => {
    const scrub = createLogScrubber({ detector });
    const relayKey = mintRelayKey();
    const agentKey = mintAgentKey();
    const line = `{"level":50,"msg":"relay: refused","key":"${relayKey}","agent":"${agentKey}"}`;
    const out = scrub(line);
    expect(out).toBe(
      '{"level":50,"msg":"relay: refused","key":"[REDACTED:coatcheck-relay-key]","agent":"[REDACTED:coatcheck-agent-key]"}',
    );
    expect(out).not.toContain(relayKey.slice(4));
    // Bare, in a header, on an environment line.
    for (const text of [relayKey, `Authorization: Bearer ${relayKey}`, `COATCHECK_RELAY_KEY=${relayKey}`]) {
      expect(scrub(text)).toBe(text.replace(relayKey, '[REDACTED:coatcheck-relay-key]'));
    }
  });

  it('masks a subtask key (ccs_) and an admin key (cck_); a ticket stays as it is', () => {
    const scrub = createLogScrubber({ detector });
    const subtaskKey = mintSubtaskKey();
    const adminKey = `cck_${randomBytes(32).toString('base64url')}`;
    const ticket = mintTicket();
    const line = `{"level":40,"msg":"spawned","key":"${subtaskKey}","admin":"${adminKey}","ticket":"${ticket}"}`;
    expect(scrub(line)).toBe(
      `{"level":40,"msg":"spawned","key":"[REDACTED:coatcheck-subtask-key]","admin":"[REDACTED:coatcheck-admin-key]","ticket":"${ticket}"}`,
    );
    for (const text of [`COATCHECK_SUBTASK_KEY=${subtaskKey}`, `export COATCHECK_ADMIN_KEY=${adminKey}`]) {
      const out = scrub(text);
      expect(out).toMatch(/\[REDACTED:coatcheck-(subtask|admin)-key\]$/);
      expect(out).not.toContain(subtaskKey.slice(4, 20));
      expect(out).not.toContain(adminKey.slice(4, 20));
    }
    // Variants left alone: a subtask key whose checksum fails, one character short; an admin
    // key prefix before a word (no entropy), or too short.
    const last = subtaskKey.at(-1)!;
    for (const text of [
      subtaskKey.slice(0, -1) + (last === 'A' ? 'B' : 'A'),
      subtaskKey.slice(0, -1),
      `cck_${'a'.repeat(43)}`,
      adminKey.slice(0, 40),
    ])
      expect(scrub(`key=${text}`), text).toBe(`key=${text}`);
  });

  it('leaves ccr_ text alone when its checksum does not hold (variants)', () => {
    const scrub = createLogScrubber({ detector });
    const relayKey = mintRelayKey();
    const last = relayKey.at(-1)!;
    const broken = relayKey.slice(0, -1) + (last === 'A' ? 'B' : 'A');
    const variants = [
      broken,
      relayKey.slice(0, -1), // one short
      `${relayKey}x`, // one long: not a key boundary
      `ccr_${'x'.repeat(43)}`,
    ];
    for (const text of variants) expect(scrub(`key=${text}`), text).toBe(`key=${text}`);
  });

  it('masks a log line and returns clean lines unchanged', () => {
    const scrub = createLogScrubber({ detector });
    expect(scrub(`{"level":30,"msg":"login","token":"${gh}"}`)).toBe(
      '{"level":30,"msg":"login","token":"[REDACTED:github-pat-classic]"}',
    );
    const clean = '{"level":30,"msg":"ok"}';
    expect(scrub(clean)).toBe(clean);
  });

  it('while the known secrets are stale, keeps only what cannot carry a secret (fail closed)', () => {
    // A vault secret the stale index has not loaded: the detector cannot know it.
    const unloaded = 'unloaded-vault-secret-4f1e2d3c';
    let stale = true;
    const scrub = createLogScrubber({ detector, stale: () => stale });
    const line = `{"level":40,"time":"2026-01-01T00:00:00.000Z","service":"coatcheck","msg":"relay heartbeat: store unreachable","code":"CC_ERR_AUDIT_UNAVAILABLE","relay":"${unloaded}","port":5432,"big":123456789,"ok":true,"token":"${gh}","nested":{"v":"${unloaded}"}}\n`;
    const out = scrub(line);
    expect(out).not.toContain(unloaded);
    expect(out).not.toContain(gh);
    expect(out.endsWith('\n')).toBe(true);
    expect(JSON.parse(out)).toEqual({
      level: 40,
      time: '2026-01-01T00:00:00.000Z',
      service: 'coatcheck',
      msg: 'relay heartbeat: store unreachable',
      code: 'CC_ERR_AUDIT_UNAVAILABLE',
      relay: WITHHELD,
      port: 5432,
      big: WITHHELD,
      ok: true,
      token: WITHHELD,
      nested: WITHHELD,
      scrub: 'conservative',
    });
    // A message still passes the detector's rules.
    expect(scrub(`{"level":30,"msg":"key ${aws}"}`)).toContain('[REDACTED:aws-access-key]');
    // A line that is not a JSON object is withheld whole.
    expect(scrub(`plain ${unloaded}\n`)).not.toContain(unloaded);
    // Loaded again: lines are scrubbed as usual.
    stale = false;
    expect(scrub(line)).toContain(unloaded);
  });
});

describe('createScrubTransform', () => {
  it('writes each complete line as soon as it arrives, masked', async () => {
    const t = createScrubTransform({ detector });
    const out: string[] = [];
    t.on('data', (d: Buffer) => out.push(d.toString()));
    t.write(`first ${aws}\nsecond `);
    await new Promise((r) => setImmediate(r));
    expect(out).toEqual(['first [REDACTED:aws-access-key]\n']);
    t.write(`${gh.slice(0, 10)}`);
    t.end(`${gh.slice(10)}`);
    await new Promise((r) => t.on('end', r));
    expect(out.join('')).toBe('first [REDACTED:aws-access-key]\nsecond [REDACTED:github-pat-classic]');
  });

  it('tokenizes when given a callback', async () => {
    const t = createScrubTransform({ detector, tokenize: () => 'cct_TICKET' });
    const sink = new PassThrough();
    t.pipe(sink);
    const chunks: Buffer[] = [];
    sink.on('data', (d: Buffer) => chunks.push(d));
    t.end(`k=${aws}\n`);
    await new Promise((r) => sink.on('end', r));
    expect(Buffer.concat(chunks).toString()).toBe('k=cct_TICKET\n');
  });
});
