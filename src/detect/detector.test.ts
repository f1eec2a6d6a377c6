import { describe, expect, it } from 'vitest';
import { mintTicket } from '../core/ticket-format.js';
import { createDetector } from './detector.js';
import { valueHash } from './fingerprint.js';
import { custom } from './rules/builders.js';
import { ALNUM, BASE32_UPPER, createRng } from './synth.js';
import { withBase62Crc32 } from './validators.js';

const rng = createRng('detector-test');
const awsKey = (): string => `AKIA${rng.chars(BASE32_UPPER, 16)}`;
const ghToken = (): string => withBase62Crc32('ghp_', rng.chars(ALNUM, 30));

describe('createDetector', () => {
  const detector = createDetector();

  it('reports rule id, family, span, fingerprint and confidence, never the value', () => {
    const key = awsKey();
    const text = `export AWS_ACCESS_KEY_ID=${key}\n`;
    const [f, ...rest] = detector.scan(text);
    expect(rest).toEqual([]);
    expect(f).toEqual({
      ruleId: 'aws-access-key',
      family: 'cloud',
      start: 25,
      end: 45,
      fingerprint: valueHash(key).slice(0, 16),
      confidence: 'high',
    });
    expect(JSON.stringify(f)).not.toContain(key);
  });

  it('uses byte offsets for Buffer input', () => {
    const key = ghToken();
    const text = `ünïcödé token=${key}`;
    const fromString = detector.scan(text)[0]!;
    const fromBytes = detector.scan(Buffer.from(text, 'utf8'))[0]!;
    expect(fromString.start).toBe(text.indexOf(key));
    expect(fromBytes.start).toBe(Buffer.from(text).indexOf(key));
    expect(fromBytes.start - fromString.start).toBe(4);
    expect(fromBytes.fingerprint).toBe(fromString.fingerprint);
  });

  it('never reports coatcheck tickets', () => {
    const t = mintTicket();
    const text = `Authorization: Bearer ${t}\npassword=${t}\npostgres://app:${t}@db:5432/x\napi_key: ${t}`;
    expect(detector.scan(text)).toEqual([]);
  });

  it.each([
    ['AWS documentation key', 'aws_access_key_id = AKIAIOSFODNN7EXAMPLE'],
    ['xxxx filler', 'token: ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'],
    ['angle placeholder', 'api_key=<YOUR_KEY>'],
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
    ['shell variable', 'password=${DB_PASSWORD}'],
    ['template variable', 'secret: "{{ app_secret }}"'],
    ['printf verb', 'password=%s'],
    ['changeme', 'password: changeme'],
    ['your-api-key-here', 'api_key = "your-api-key-here"'],
    ['UUID', 'token: 123e4567-e89b-42d3-a456-426614174000'],
    ['git SHA', 'secret_commit_token: 4b825dc642cb6eb9a060e54bf8d69288fbee4904'],
    ['sha256 digest', 'token = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'],
    [
      'SRI integrity',
      '<script src="x.js" integrity="sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC"></script>',
    ],
    [
      'data URI',
      '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==">',
    ],
    ['minified code', 'var a=function(t){return t.password=e.password,t.token=n.token,t};'],
    ['code reference', 'const token = process.env.GITHUB_TOKEN;'],
    ['TypeScript type', 'interface Login { password: string; token?: string }'],
  ])('does not report a %s', (_name, text) => {
    expect(detector.scan(text)).toEqual([]);
  });

  it('allowlists by rule id, by value hash and by regex', () => {
    const a = awsKey();
    const b = ghToken();
    const text = `k1=${a} k2=${b}`;
    expect(detector.scan(text).map((f) => f.ruleId)).toEqual(['aws-access-key', 'github-pat-classic']);
    expect(
      createDetector({ allowlist: { rules: ['aws-access-key'] } })
        .scan(text)
        .map((f) => f.ruleId),
    ).toEqual(['github-pat-classic']);
    expect(
      createDetector({ allowlist: { valueHashes: [valueHash(b)] } })
        .scan(text)
        .map((f) => f.ruleId),
    ).toEqual(['aws-access-key']);
    expect(
      createDetector({ allowlist: { patterns: ['^AKIA'] } })
        .scan(text)
        .map((f) => f.ruleId),
    ).toEqual(['github-pat-classic']);
  });

  it('keyed fingerprints differ from plain ones', () => {
    const text = `k=${awsKey()}`;
    const plain = detector.scan(text)[0]!.fingerprint;
    const keyed = createDetector({ fingerprintKey: 'k1' }).scan(text)[0]!.fingerprint;
    expect(keyed).toMatch(/^[0-9a-f]{16}$/);
    expect(keyed).not.toBe(plain);
  });

  it('prefers the specific rule over generic ones on the same span', () => {
    const key = ghToken();
    const found = detector.scan(`password: "${key}"`);
    expect(found.map((f) => f.ruleId)).toEqual(['github-pat-classic']);
  });

  it('turns PII rules on with pii: true or enable', () => {
    const text = 'mail ada.lovelace@analytical.org now';
    expect(detector.scan(text)).toEqual([]);
    expect(
      createDetector({ pii: true })
        .scan(text)
        .map((f) => f.ruleId),
    ).toEqual(['email-address']);
    expect(
      createDetector({ enable: ['email-address'] })
        .scan(text)
        .map((f) => f.ruleId),
    ).toEqual(['email-address']);
  });

  it('rejects unknown rule ids and bad allowlist entries with stable codes', () => {
    expect(() => createDetector({ disable: ['nope'] })).toThrow(
      expect.objectContaining({ code: 'CC_ERR_DETECT_UNKNOWN_RULE', message: 'unknown rule nope' }),
    );
    expect(() => createDetector({ allowlist: { rules: ['nope'] } })).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_UNKNOWN_RULE',
        message: 'allowlist names unknown rule nope',
      }),
    );
    expect(() => createDetector({ allowlist: { valueHashes: ['abc'] } })).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_ALLOWLIST_INVALID',
        message: 'allowlist value hash must be 64 hex digits (SHA-256)',
      }),
    );
    expect(() => createDetector({ allowlist: { patterns: ['('] } })).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_ALLOWLIST_INVALID',
        message: 'allowlist pattern 0 is not a valid regular expression',
      }),
    );
  });

  it('refuses rules that could backtrack without bound or lack a capture group', () => {
    const base = {
      family: 'generic' as const,
      title: 't',
      keywords: ['x'],
      maxLength: 10,
      sample: () => ({ key: 'k', value: 'v', secret: 'v', standalone: true }),
      positives: [],
      negatives: [],
    };
    expect(() => createDetector({ rules: [custom({ ...base, id: 'bad-star', pattern: /x(a+)+/ })] })).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_RULE_INVALID',
        message: 'rule bad-star: pattern has an unbounded quantifier at offset 3',
      }),
    );
    expect(() =>
      createDetector({ rules: [custom({ ...base, id: 'no-group', pattern: /x[a-z]{3}/ })] }),
    ).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_RULE_INVALID',
        message: 'rule no-group: pattern needs a capture group around the secret',
      }),
    );
    expect(() =>
      createDetector({ rules: [custom({ ...base, id: 'Bad_Id', pattern: /x([a-z]{3})/ })] }),
    ).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_RULE_INVALID',
        message: 'rule Bad_Id: id must be kebab-case',
      }),
    );
  });
});

describe('binary input', () => {
  const detector = createDetector();
  /** Seeded pseudo-random bytes (the same every run), 32 bits at a time. */
  function noise(seed: string, length: number): Buffer {
    const r = createRng(seed);
    const out = Buffer.allocUnsafe(length);
    for (let i = 0; i < length; i += 4) out.writeUInt32LE(r.int(2 ** 32), i);
    return out;
  }

  it('finds nothing in random bytes, even after every keyword a generic rule keys on', () => {
    // scp and archives stream bytes like these; a finding would replace bytes with a ticket
    // and corrupt the copy. Without the binary check, plain noise held about five `pwd`-keyed
    // findings per GiB, and this input 288 (one keyword every 32 KiB). With it, what
    // remains is the chance that eight random bytes are valid UTF-8 without a control
    // character: about one in 10,000 keyword hits.
    const keys = ['pwd: ', 'password=', 'passwd:', 'secret=', 'api_key=', 'token: ', 'client_secret='];
    const data = noise('binary-noise', 32 * 1024 * 1024);
    for (let at = 4096, k = 0; at < data.length - 64; at += 32 * 1024, k++)
      data.write(keys[k % keys.length]!, at, 'latin1');
    expect(detector.scan(data)).toEqual([]);
  });

  it('still finds a password written in UTF-8, from bytes and from text', () => {
    const text = 'password=Sécurité-Pa5s-wörd9\n';
    for (const input of [Buffer.from(text, 'utf8'), text]) {
      expect(detector.scan(input).map((f) => f.ruleId)).toContain('generic-password');
    }
  });

  it('does not take a value with a control character, or bytes that are not UTF-8, for a password (variants)', () => {
    for (const value of ['Pa5s\u0001word-93kX', 'Pa5s\u007fword-93kX', 'Pa5s\u001bword-93kX']) {
      for (const input of [Buffer.from(`password=${value}\n`, 'latin1'), `password=${value}\n`]) {
        expect(detector.scan(input)).toEqual([]);
      }
    }
    // Bytes only: a lone lead byte, a stray continuation byte, a lead byte cut short inside the value.
    for (const bytes of [[0xc3, 0x41], [0x80], [0xe2, 0x82, 0x41], [0xff]]) {
      const input = Buffer.concat([
        Buffer.from('password=Pa5s'),
        Buffer.from(bytes),
        Buffer.from('word-93kX\n'),
      ]);
      expect(detector.scan(input)).toEqual([]);
    }
  });
});
