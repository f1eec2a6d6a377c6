import { readdir, readFile, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { type Command, Option } from 'commander';
import ignore, { type Ignore } from 'ignore';
import { CoatcheckError, isCoatcheckError } from '../core/errors.js';
import type { Detector, DetectorOptions } from './detector.js';
import type { LocatedFinding } from './sarif.js';
import type { Finding } from './types.js';

/** Where a value being tokenized came from, so the vault can bind the ticket to it. */
export interface TokenizeOrigin {
  readonly command: 'scrub' | 'tokenize';
  readonly source: 'stdin';
  /** The agent the new tickets are bound to (`--to`). */
  readonly to?: string;
  /** Where the secrets may be released (`--dest`); none: nowhere until an operator allows it. */
  readonly destinations?: readonly string[];
}

/** Who the tickets are for: `--to AGENT [--dest D]...` on scrub --tokenize and tokenize. */
export interface TokenizeBinding {
  readonly to?: string;
  readonly dest?: readonly string[];
}

/** One call of the vault's cleaner: the text back with every finding masked or tokenized. */
export interface CleanRequest {
  readonly mode: 'mask' | 'tokenize';
  /** Scan line by line (scrub) rather than the text as a whole (tokenize). */
  readonly lines: boolean;
  readonly pii: boolean;
  readonly to?: string;
  readonly destinations?: readonly string[];
  readonly source: TokenizeOrigin['command'];
}
export type TextCleaner = (text: string, request: CleanRequest) => Promise<string>;

/**
 * Text sent to the cleaner in one call stays under this many bytes of JSON (the admin API
 * takes bodies up to 256 KiB); a longer text is sent in pieces cut at line ends.
 */
const CLEAN_BATCH_BYTES = 192 * 1024;
/** A line longer than this is sent to the cleaner in pieces of this many characters. */
const CLEAN_MAX_LINE = 32 * 1024;

const jsonBytes = (text: string): number => Buffer.byteLength(JSON.stringify(text));

/** `text` cut into pieces the cleaner accepts: at line ends, a too-long line in CLEAN_MAX_LINE pieces. */
function cleanBatches(text: string): string[] {
  const batches: string[] = [];
  let batch = '';
  let batchBytes = 0;
  const add = (piece: string) => {
    const bytes = jsonBytes(piece);
    if (batch.length > 0 && batchBytes + bytes > CLEAN_BATCH_BYTES) {
      batches.push(batch);
      batch = '';
      batchBytes = 0;
    }
    batch += piece;
    batchBytes += bytes;
  };
  let at = 0;
  while (at < text.length) {
    const nl = text.indexOf('\n', at);
    const line = nl === -1 ? text.slice(at) : text.slice(at, nl + 1);
    at += line.length;
    for (let i = 0; i < line.length; i += CLEAN_MAX_LINE) add(line.slice(i, i + CLEAN_MAX_LINE));
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

/**
 * scrub through the vault's cleaner: complete lines are sent in batches as they arrive (so
 * `tail -f | coatcheck scrub` still shows lines as they come), each line scanned on its own.
 */
function createCleanerTransform(cleaner: TextCleaner, request: CleanRequest): Transform {
  let pending = '';
  const decoder = new TextDecoder('utf-8');
  const drain = async (final: boolean, push: (s: string) => void): Promise<void> => {
    const nl = pending.lastIndexOf('\n');
    let ready: string;
    if (final) {
      ready = pending;
      pending = '';
    } else if (nl !== -1) {
      ready = pending.slice(0, nl + 1);
      pending = pending.slice(nl + 1);
    } else if (pending.length > CLEAN_MAX_LINE) {
      ready = pending.slice(0, CLEAN_MAX_LINE);
      pending = pending.slice(CLEAN_MAX_LINE);
    } else {
      return;
    }
    for (const batch of cleanBatches(ready)) push(await cleaner(batch, request));
  };
  return new Transform({
    transform(chunk: Buffer | string, _enc: BufferEncoding, callback: TransformCallback) {
      pending += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
      drain(false, (s) => this.push(s)).then(() => callback(), callback);
    },
    flush(callback: TransformCallback) {
      pending += decoder.decode();
      drain(true, (s) => this.push(s)).then(() => callback(), callback);
    },
  });
}

function requireAgent(command: TokenizeOrigin['command'], binding: TokenizeBinding): string {
  if (binding.to === undefined) {
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      `${command}: --to AGENT is required: every ticket is bound to an agent`,
      { details: { field: '--to' } },
    );
  }
  return binding.to;
}

/** What the detect commands need from the host CLI. */
export interface DetectCommandDeps {
  readonly stdin: NodeJS.ReadableStream;
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream & { isTTY?: boolean };
  /** Receives each command's exit code: 0 clean, 1 found (scan), 2 error. */
  readonly setExitCode: (code: number) => void;
  /** Registers the value in the vault and returns its ticket (scrub --tokenize, tokenize). */
  readonly tokenize?: (finding: Finding, value: string, origin: TokenizeOrigin) => Promise<string>;
  /**
   * The vault's cleaner (scrub, tokenize): where a vault is configured, text is cleaned by the
   * `textClean` admin operation — through the running server, or in process on the store —
   * with every rule and every vault secret, so the CLI never holds a secret value. Resolves
   * to null where no vault is configured (the rules alone apply; tokenizing is refused).
   */
  readonly cleaner?: () => Promise<TextCleaner | null>;
  /** Detector configuration (allowlist, known secrets, fingerprint key). */
  readonly detectorOptions?: DetectorOptions;
  /** Base for relative paths in reports (default process.cwd()). */
  readonly cwd?: string;
  /** Version written into SARIF (default 0.0.0). */
  readonly version?: string;
}

export const SCAN_EXIT = { clean: 0, found: 1, error: 2 } as const;

/** Files larger than this are skipped by `scan` (with a note on stderr). */
const MAX_FILE_BYTES = 64 * 1024 * 1024;
/** `tokenize` reads stdin whole, up to this. */
const MAX_TOKENIZE_BYTES = 64 * 1024 * 1024;

type Format = 'text' | 'json' | 'sarif';

interface ScanOptions {
  readonly format: Format;
  readonly pii?: boolean;
  readonly disable?: readonly string[];
}

function writeError(deps: DetectCommandDeps, error: unknown): void {
  if (isCoatcheckError(error)) {
    deps.stderr.write(`coatcheck: ${error.code}: ${error.message}\n`);
  } else {
    deps.stderr.write('coatcheck: CC_ERR_INTERNAL: internal error in the detect command\n');
  }
}

/** Offsets of line starts, for turning byte offsets into line/column (1-based). */
function lineIndex(buf: Buffer): number[] {
  const starts = [0];
  for (let i = buf.indexOf(10); i !== -1; i = buf.indexOf(10, i + 1)) starts.push(i + 1);
  return starts;
}

function locate(starts: readonly number[], offset: number): { line: number; column: number } {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (starts[mid]! <= offset) lo = mid;
    else hi = mid - 1;
  }
  return { line: lo + 1, column: offset - starts[lo]! + 1 };
}

function located(path: string, starts: readonly number[], f: Finding): LocatedFinding {
  const a = locate(starts, f.start);
  const b = locate(starts, f.end);
  return {
    path,
    line: a.line,
    column: a.column,
    endLine: b.line,
    endColumn: b.column,
    start: f.start,
    end: f.end,
    ruleId: f.ruleId,
    family: f.family,
    confidence: f.confidence,
    fingerprint: f.fingerprint,
    ...(f.secretId === undefined ? {} : { secretId: f.secretId }),
  };
}

function looksBinary(buf: Buffer): boolean {
  return buf.subarray(0, 8000).includes(0);
}

interface WalkEntry {
  readonly path: string;
  readonly display: string;
}

/**
 * Files under `root`, skipping .git and whatever .gitignore files (at any depth) exclude.
 * Symbolic links inside the tree are not followed (no loops, no escaping the tree).
 * `display` names a file the way the user named the tree: relative to the working directory
 * for a relative root, absolute for an absolute one.
 */
async function* walk(root: string, display: (full: string) => string): AsyncGenerator<WalkEntry> {
  const stack: { dir: string; rules: { base: string; ig: Ignore }[] }[] = [{ dir: root, rules: [] }];
  while (stack.length > 0) {
    const { dir, rules } = stack.pop()!;
    let here = rules;
    try {
      const text = await readFile(join(dir, '.gitignore'), 'utf8');
      here = [...rules, { base: dir, ig: ignore().add(text) }];
    } catch {
      // no .gitignore here
    }
    const entries = await readdir(dir, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const subdirs: string[] = [];
    for (const e of entries) {
      if (e.name === '.git') continue;
      const full = join(dir, e.name);
      const isDir = e.isDirectory();
      const ignored = here.some(({ base, ig }) => {
        const rel = relative(base, full).split(sep).join('/');
        return ig.ignores(isDir ? `${rel}/` : rel);
      });
      if (ignored) continue;
      if (isDir) subdirs.push(full);
      else if (e.isFile()) yield { path: full, display: display(full) };
    }
    for (const d of subdirs.reverse()) stack.push({ dir: d, rules: here });
  }
}

function progress(deps: DetectCommandDeps): { tick(bytes: number): void; done(): void } {
  if (deps.stderr.isTTY !== true) return { tick() {}, done() {} };
  let files = 0;
  let bytes = 0;
  let last = 0;
  return {
    tick(n) {
      files++;
      bytes += n;
      const now = Date.now();
      if (now - last > 200) {
        last = now;
        deps.stderr.write(`\rscanning: ${files} files, ${(bytes / 1048576).toFixed(1)} MiB`);
      }
    },
    done() {
      if (last !== 0) deps.stderr.write('\r\x1b[K');
    },
  };
}

async function scanStdin(deps: DetectCommandDeps, detector: Detector): Promise<LocatedFinding[]> {
  const { createStreamScanner } = await import('./stream-scanner.js');
  const scanner = createStreamScanner({ detector });
  const starts = [0];
  let offset = 0;
  const found: Finding[] = [];
  for await (const chunk of deps.stdin) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    for (let i = buf.indexOf(10); i !== -1; i = buf.indexOf(10, i + 1)) starts.push(offset + i + 1);
    offset += buf.length;
    found.push(...scanner.write(buf));
  }
  found.push(...scanner.end());
  return found.map((f) => located('-', starts, f));
}

/** `coatcheck scan`: returns the exit code. */
export async function runScan(
  paths: readonly string[],
  options: ScanOptions,
  deps: DetectCommandDeps,
): Promise<number> {
  // The rules load with the command that uses them (every other command starts faster).
  const { createDetector } = await import('./detector.js');
  let detector: Detector;
  try {
    detector = createDetector({
      ...deps.detectorOptions,
      pii: options.pii === true,
      disable: [...(deps.detectorOptions?.disable ?? []), ...(options.disable ?? [])],
    });
  } catch (error) {
    writeError(deps, error);
    return SCAN_EXIT.error;
  }
  const cwd = deps.cwd ?? process.cwd();
  const results: LocatedFinding[] = [];
  const bar = progress(deps);
  let files = 0;
  const targets = paths.length === 0 ? ['-'] : paths;
  try {
    for (const target of targets) {
      if (target === '-') {
        results.push(...(await scanStdin(deps, detector)));
        files++;
        continue;
      }
      // resolve, not join: an absolute target stands on its own (join would glue it under cwd).
      const full = resolve(cwd, target);
      const absolute = isAbsolute(target);
      const display = (p: string): string => (absolute ? p : relative(cwd, p)).split(sep).join('/');
      const info = await stat(full).catch((cause: unknown) => {
        throw new CoatcheckError('CC_ERR_DETECT_INPUT_UNREADABLE', `cannot read ${target}`, {
          cause,
          details: { path: target },
        });
      });
      const entries: AsyncIterable<WalkEntry> | WalkEntry[] = info.isDirectory()
        ? walk(full, display)
        : [{ path: full, display: target.split(sep).join('/') }];
      for await (const entry of entries) {
        const size = (await stat(entry.path)).size;
        if (size > MAX_FILE_BYTES) {
          deps.stderr.write(`coatcheck: skipped ${entry.display}: larger than 64 MiB\n`);
          continue;
        }
        const buf = await readFile(entry.path).catch((cause: unknown) => {
          throw new CoatcheckError('CC_ERR_DETECT_INPUT_UNREADABLE', `cannot read ${entry.display}`, {
            cause,
            details: { path: entry.display },
          });
        });
        bar.tick(buf.length);
        files++;
        if (looksBinary(buf)) continue;
        const found = detector.scan(buf);
        if (found.length === 0) continue;
        const starts = lineIndex(buf);
        for (const f of found) results.push(located(entry.display, starts, f));
      }
    }
  } catch (error) {
    bar.done();
    writeError(deps, error);
    return SCAN_EXIT.error;
  }
  bar.done();

  if (options.format === 'json') {
    deps.stdout.write(`${JSON.stringify({ findings: results, files }, null, 2)}\n`);
  } else if (options.format === 'sarif') {
    const { toSarif } = await import('./sarif.js');
    deps.stdout.write(
      `${JSON.stringify(toSarif(results, detector.rules, deps.version ?? '0.0.0'), null, 2)}\n`,
    );
  } else {
    for (const f of results) {
      deps.stdout.write(
        `${f.path}:${f.line}:${f.column}: ${f.ruleId} (${f.family}, ${f.confidence}) fingerprint ${f.fingerprint}\n`,
      );
    }
    const noun = results.length === 1 ? 'finding' : 'findings';
    deps.stderr.write(`${results.length} ${noun} in ${files} ${files === 1 ? 'input' : 'inputs'}\n`);
  }
  return results.length > 0 ? SCAN_EXIT.found : SCAN_EXIT.clean;
}

function requireTokenize(
  deps: DetectCommandDeps,
  command: TokenizeOrigin['command'],
  binding: TokenizeBinding = {},
) {
  const tokenize = deps.tokenize;
  if (tokenize === undefined) {
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      `${command}: tokenizing needs the vault, which is not configured here`,
    );
  }
  if (binding.to === undefined) {
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      `${command}: --to AGENT is required: every ticket is bound to an agent`,
      {
        details: { field: '--to' },
      },
    );
  }
  const origin: TokenizeOrigin = {
    command,
    source: 'stdin',
    to: binding.to,
    destinations: binding.dest ?? [],
  };
  return (f: Finding, value: string) => tokenize(f, value, origin);
}

/** `coatcheck scrub`: stdin to stdout, line by line, masked (or tokenized). */
export async function runScrub(
  options: { tokenize?: boolean; pii?: boolean } & TokenizeBinding,
  deps: DetectCommandDeps,
): Promise<number> {
  try {
    const cleaner = (await deps.cleaner?.()) ?? null;
    if (cleaner !== null) {
      if (options.tokenize === true) requireAgent('scrub', options);
      const transform = createCleanerTransform(cleaner, {
        mode: options.tokenize === true ? 'tokenize' : 'mask',
        lines: true,
        pii: options.pii === true,
        ...(options.to === undefined ? {} : { to: options.to }),
        ...(options.dest === undefined ? {} : { destinations: options.dest }),
        source: 'scrub',
      });
      await pipeline(deps.stdin, transform, deps.stdout, { end: false });
      return SCAN_EXIT.clean;
    }
    const [{ createDetector }, { createScrubTransform }] = await Promise.all([
      import('./detector.js'),
      import('./scrub.js'),
    ]);
    const detector = createDetector({ ...deps.detectorOptions, pii: options.pii === true });
    const transform = createScrubTransform({
      detector,
      ...(options.tokenize === true ? { tokenize: requireTokenize(deps, 'scrub', options) } : {}),
    });
    await pipeline(deps.stdin, transform, deps.stdout, { end: false });
    return SCAN_EXIT.clean;
  } catch (error) {
    writeError(deps, error);
    return SCAN_EXIT.error;
  }
}

/** `coatcheck tokenize`: text in, the same text with every secret replaced by a ticket out. */
export async function runTokenize(
  options: { pii?: boolean } & TokenizeBinding,
  deps: DetectCommandDeps,
): Promise<number> {
  try {
    const cleaner = (await deps.cleaner?.()) ?? null;
    const tokenize = cleaner === null ? requireTokenize(deps, 'tokenize', options) : null;
    const to = requireAgent('tokenize', options);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of deps.stdin) {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
      size += buf.length;
      if (size > MAX_TOKENIZE_BYTES) {
        throw new CoatcheckError(
          'CC_ERR_BODY_TOO_LARGE',
          'tokenize: input is larger than 64 MiB; use scrub --tokenize',
        );
      }
      chunks.push(buf);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    if (cleaner !== null) {
      // Cleaned whole when it fits one call; a longer text in pieces cut at line ends.
      const request: CleanRequest = {
        mode: 'tokenize',
        lines: false,
        pii: options.pii === true,
        to,
        ...(options.dest === undefined ? {} : { destinations: options.dest }),
        source: 'tokenize',
      };
      const out: string[] = [];
      for (const batch of cleanBatches(text)) out.push(await cleaner(batch, request));
      deps.stdout.write(out.join(''));
      return SCAN_EXIT.clean;
    }
    const [{ createDetector }, { tokenizeText }] = await Promise.all([
      import('./detector.js'),
      import('./scrub.js'),
    ]);
    const detector = createDetector({ ...deps.detectorOptions, pii: options.pii === true });
    const out = await tokenizeText(text, tokenize!, { detector });
    deps.stdout.write(out.text);
    return SCAN_EXIT.clean;
  } catch (error) {
    writeError(deps, error);
    return SCAN_EXIT.error;
  }
}

/** Adds `scan`, `scrub` and `tokenize` to the coatcheck CLI. */
export function registerDetectCommands(program: Command, deps: DetectCommandDeps): void {
  program
    .command('scan')
    .description('find secrets (and, with --pii, personal data) in files, directories or stdin')
    .argument('[paths...]', 'files or directories (respecting .gitignore); - or nothing for stdin')
    .addOption(
      new Option('--format <format>', 'output format').choices(['text', 'json', 'sarif']).default('text'),
    )
    .option('--pii', 'also report personal data (email, card, IBAN, SSN, phone, IP)')
    .option('--disable <rule-ids...>', 'rule ids to skip')
    .action(async (paths: string[], opts: { format: Format; pii?: boolean; disable?: string[] }) => {
      deps.setExitCode(await runScan(paths, opts, deps));
    });
  program
    .command('scrub')
    .description('copy stdin to stdout with every secret masked, line by line')
    .option('--tokenize', 'replace secrets with tickets registered in the vault instead of masks')
    .option('--pii', 'also mask personal data')
    .option('--to <agent>', 'with --tokenize: the agent the tickets are bound to')
    .option(
      '--dest <dest>',
      'with --tokenize: where the secrets may be released (repeatable)',
      (v: string, p: string[] = []) => [...p, v],
    )
    .action(async (opts: { tokenize?: boolean; pii?: boolean } & TokenizeBinding) => {
      deps.setExitCode(await runScrub(opts, deps));
    });
  program
    .command('tokenize')
    .description('read text on stdin, write it back with every secret replaced by a ticket')
    .option('--pii', 'also tokenize personal data')
    .option('--to <agent>', 'the agent the tickets are bound to')
    .option(
      '--dest <dest>',
      'where the secrets may be released (repeatable)',
      (v: string, p: string[] = []) => [...p, v],
    )
    .action(async (opts: { pii?: boolean } & TokenizeBinding) => {
      deps.setExitCode(await runTokenize(opts, deps));
    });
}
