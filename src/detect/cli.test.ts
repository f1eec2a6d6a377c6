import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DetectCommandDeps, registerDetectCommands } from './cli.js';
import { valueHash } from './fingerprint.js';
import { ALNUM, BASE32_UPPER, createRng } from './synth.js';
import { withBase62Crc32 } from './validators.js';

const rng = createRng('cli');
const AWS = `AKIA${rng.chars(BASE32_UPPER, 16)}`;
const GH = withBase62Crc32('ghp_', rng.chars(ALNUM, 30));
const fp = (v: string) => valueHash(v).slice(0, 16);

interface Run {
  code: number | undefined;
  stdout: string;
  stderr: string;
}

async function run(
  argv: string[],
  opts: {
    stdin?: string | string[];
    cwd?: string;
    tokenize?: DetectCommandDeps['tokenize'];
    tty?: boolean;
  } = {},
): Promise<Run> {
  const stdout = new PassThrough();
  const stderr = Object.assign(new PassThrough(), { isTTY: opts.tty === true });
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  let code: number | undefined;
  const chunks = opts.stdin === undefined ? [] : Array.isArray(opts.stdin) ? opts.stdin : [opts.stdin];
  const program = new Command().exitOverride();
  registerDetectCommands(program, {
    stdin: Readable.from(chunks.map((c) => Buffer.from(c))),
    stdout,
    stderr,
    setExitCode: (c) => {
      code = c;
    },
    ...(opts.tokenize === undefined ? {} : { tokenize: opts.tokenize }),
    cwd: opts.cwd ?? process.cwd(),
    version: '0.1.0',
  });
  await program.parseAsync(argv, { from: 'user' });
  return { code, stdout: out, stderr: err };
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cc-detect-'));
  await writeFile(join(dir, '.gitignore'), 'ignored/\n*.log\n');
  await writeFile(join(dir, 'config.env'), `NODE_ENV=production\nAWS_ACCESS_KEY_ID=${AWS}\n`);
  await writeFile(join(dir, 'clean.txt'), 'nothing here\n');
  await writeFile(join(dir, 'debug.log'), `token ${GH}\n`);
  await mkdir(join(dir, 'ignored'));
  await writeFile(join(dir, 'ignored', 'x.env'), `k=${GH}\n`);
  await mkdir(join(dir, 'sub'));
  await writeFile(join(dir, 'sub', '.gitignore'), 'local.txt\n');
  await writeFile(join(dir, 'sub', 'local.txt'), `k=${GH}\n`);
  await writeFile(join(dir, 'sub', 'app.json'), `{\n  "github": "${GH}"\n}\n`);
  await writeFile(join(dir, 'blob.bin'), Buffer.concat([Buffer.from([0, 1, 2]), Buffer.from(AWS)]));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('coatcheck scan', () => {
  it('reports findings in a directory, respecting .gitignore, and exits 1', async () => {
    const r = await run(['scan', '.'], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe(
      `config.env:2:19: aws-access-key (cloud, high) fingerprint ${fp(AWS)}\n` +
        `sub/app.json:2:14: github-pat-classic (vcs-ci, high) fingerprint ${fp(GH)}\n`,
    );
    expect(r.stderr).toBe('2 findings in 6 inputs\n');
    expect(r.stdout + r.stderr).not.toContain(AWS);
  });

  it('exits 0 on clean input', async () => {
    const r = await run(['scan', 'clean.txt'], { cwd: dir });
    expect(r).toEqual({ code: 0, stdout: '', stderr: '0 findings in 1 input\n' });
  });

  it('reads stdin for - (and with no paths), with line numbers', async () => {
    const r = await run(['scan', '-', '--format', 'json'], { stdin: ['line one\nkey=', `${AWS}\n`] });
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual({
      files: 1,
      findings: [
        {
          path: '-',
          line: 2,
          column: 5,
          endLine: 2,
          endColumn: 25,
          start: 13,
          end: 33,
          ruleId: 'aws-access-key',
          family: 'cloud',
          confidence: 'high',
          fingerprint: fp(AWS),
        },
      ],
    });
    const r2 = await run(['scan'], { stdin: 'clean' });
    expect(r2.code).toBe(0);
  });

  it('writes SARIF 2.1.0', async () => {
    const r = await run(['scan', 'config.env', '--format', 'sarif'], { cwd: dir });
    expect(r.code).toBe(1);
    const log = JSON.parse(r.stdout);
    expect(log.version).toBe('2.1.0');
    expect(log.runs[0].tool.driver.name).toBe('coatcheck');
    expect(log.runs[0].tool.driver.rules.map((x: { id: string }) => x.id)).toEqual(['aws-access-key']);
    expect(log.runs[0].results).toEqual([
      {
        ruleId: 'aws-access-key',
        ruleIndex: 0,
        level: 'error',
        message: { text: `AWS access key id (long-term, AKIA) found (fingerprint ${fp(AWS)}).` },
        locations: [
          {
            physicalLocation: {
              artifactLocation: { uri: 'config.env' },
              region: {
                startLine: 2,
                startColumn: 19,
                endLine: 2,
                endColumn: 39,
                byteOffset: 38,
                byteLength: 20,
              },
            },
          },
        ],
        partialFingerprints: { 'coatcheckValueFingerprint/v1': fp(AWS) },
        properties: { confidence: 'high', family: 'cloud' },
      },
    ]);
    expect(r.stdout).not.toContain(AWS);
  });

  it('exits 2 with a stable code when a path cannot be read', async () => {
    const r = await run(['scan', 'missing.txt'], { cwd: dir });
    expect(r).toEqual({
      code: 2,
      stdout: '',
      stderr: 'coatcheck: CC_ERR_DETECT_INPUT_UNREADABLE: cannot read missing.txt\n',
    });
  });

  it('exits 2 on an unknown rule id', async () => {
    const r = await run(['scan', 'clean.txt', '--disable', 'no-such-rule'], { cwd: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('coatcheck: CC_ERR_DETECT_UNKNOWN_RULE: unknown rule no-such-rule\n');
  });

  it('shows progress only on a terminal', async () => {
    const piped = await run(['scan', '.'], { cwd: dir });
    expect(piped.stderr).not.toContain('scanning:');
  });
});

describe('coatcheck scrub', () => {
  it('masks stdin to stdout line by line', async () => {
    const r = await run(['scrub'], { stdin: [`a ${AWS}\nb `, `${GH} c\nclean`] });
    expect(r).toEqual({
      code: 0,
      stdout: 'a [REDACTED:aws-access-key]\nb [REDACTED:github-pat-classic] c\nclean',
      stderr: '',
    });
  });

  it('tokenizes with --tokenize through deps.tokenize', async () => {
    const calls: string[] = [];
    const r = await run(['scrub', '--tokenize', '--to', 'builder', '--dest', 'aws'], {
      stdin: `x=${AWS}\n`,
      tokenize: async (f, value, origin) => {
        calls.push(
          `${f.ruleId}:${origin.command}:${origin.source}:${value === AWS}:${origin.to}:${origin.destinations?.join(',')}`,
        );
        return 'cct_TICKET';
      },
    });
    expect(r).toEqual({ code: 0, stdout: 'x=cct_TICKET\n', stderr: '' });
    expect(calls).toEqual(['aws-access-key:scrub:stdin:true:builder:aws']);
  });

  it('exits 2 when --tokenize names no agent', async () => {
    const r = await run(['scrub', '--tokenize'], { stdin: 'x', tokenize: async () => 'cct_x' });
    expect(r).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'coatcheck: CC_ERR_INVALID_ARGUMENT: scrub: --to AGENT is required: every ticket is bound to an agent\n',
    });
  });

  it('exits 2 when --tokenize has no vault', async () => {
    const r = await run(['scrub', '--tokenize'], { stdin: 'x' });
    expect(r).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'coatcheck: CC_ERR_INVALID_ARGUMENT: scrub: tokenizing needs the vault, which is not configured here\n',
    });
  });
});

describe('coatcheck tokenize', () => {
  it('replaces every secret with a ticket', async () => {
    let n = 0;
    const r = await run(['tokenize', '--to', 'builder'], {
      stdin: `use ${AWS} and ${GH}`,
      tokenize: async () => `cct_T${++n}`,
    });
    expect(r).toEqual({ code: 0, stdout: 'use cct_T1 and cct_T2', stderr: '' });
  });

  it('fails closed (exit 2, nothing on stdout) when the vault fails', async () => {
    const r = await run(['tokenize', '--to', 'builder'], {
      stdin: `use ${AWS}`,
      tokenize: async () => {
        throw new Error('store down');
      },
    });
    expect(r).toEqual({
      code: 2,
      stdout: '',
      stderr: `coatcheck: CC_ERR_DETECT_TOKENIZE_FAILED: tokenize failed for a aws-access-key finding (fingerprint ${fp(AWS)})\n`,
    });
  });
});
