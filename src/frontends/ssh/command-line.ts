import { CoatcheckError } from '../../core/errors.js';

/**
 * The command line of an SSH `exec` request, read the way POSIX sh reads it — or refused.
 *
 * The upstream runs the request through the account's login shell (`$SHELL -c LINE`), so
 * the policy must decide on what that shell will run. This parser accepts only the part of
 * the sh grammar whose meaning is exact without running anything: simple commands made of
 * words, where a word is built from
 *
 *   - unquoted characters of the safe set `A-Z a-z 0-9 _ @ % + = : , . / -`,
 *   - a backslash followed by a printable ASCII character (that character, literally),
 *   - single-quoted text ('…': every character literal),
 *   - double-quoted text without `$`, a backquote or a backslash inside.
 *
 * Everything else is refused with CC_ERR_SSH_COMMAND_UNCLASSIFIED: control operators
 * (`;` `&` `|` `&&` `||`), redirections (`<` `>`), substitutions and expansions (`$`,
 * backquotes, `$(…)`, `~`, globs `* ? [ ]`, braces `{ }`), subshells `( )`, comments `#`,
 * `!`, line breaks and other control characters, an assignment before the program
 * (`NAME=value cmd`), and a line with no word. What the gateway forwards is not the
 * client's text but the argv re-quoted (`quoteArgv`): each word in single quotes unless it
 * is all safe characters, so the upstream shell sees literal words and nothing else.
 */

export const MAX_COMMAND_BYTES = 16 * 1024;
export const MAX_COMMAND_WORDS = 512;

const SAFE = /^[A-Za-z0-9_@%+=:,./-]$/;
const SAFE_WORD = /^[A-Za-z0-9_@%+=:,./-]+$/;
/** Reserved words of POSIX sh, bash, ksh and zsh that are spelled in the safe set. */
const RESERVED = new Set([
  'if',
  'then',
  'else',
  'elif',
  'fi',
  'do',
  'done',
  'case',
  'esac',
  'while',
  'until',
  'for',
  'in',
  'function',
  'select',
  'time',
  'coproc',
  'repeat',
  'foreach',
  'end',
  'nocorrect',
  'noglob',
]);

export interface ParsedCommand {
  /** The program (first word) and its arguments, exactly as the shell will pass them. */
  readonly argv: readonly string[];
  /** The argv re-quoted for sh: what the gateway sends upstream and what policy sees as `command`. */
  readonly line: string;
}

function refuse(reason: string, detail: string): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_SSH_COMMAND_UNCLASSIFIED',
    `coatcheck: the command line was refused: ${detail}; only simple commands of plain or quoted words are carried (docs/frontends/ssh.md)`,
    { details: { reason } },
  );
}

/** What an unquoted special character means to sh, for the refusal message. */
function describe(ch: string): [string, string] {
  if (ch === ';' || ch === '&' || ch === '|') return ['control-operator', `control operator ${ch}`];
  if (ch === '<' || ch === '>') return ['redirection', `redirection ${ch}`];
  if (ch === '$') return ['expansion', 'parameter expansion or command substitution ($)'];
  if (ch === '`') return ['substitution', 'command substitution (backquote)'];
  if (ch === '(' || ch === ')') return ['subshell', `subshell or function syntax ${ch}`];
  if (ch === '*' || ch === '?' || ch === '[' || ch === ']') return ['glob', `pathname expansion ${ch}`];
  if (ch === '{' || ch === '}') return ['brace', `brace ${ch}`];
  if (ch === '~') return ['tilde', 'tilde expansion (~)'];
  if (ch === '#') return ['comment', 'comment (#)'];
  if (ch === '!') return ['negation', 'pipeline negation (!)'];
  if (ch === '\n' || ch === '\r') return ['newline', 'a line break (a second command)'];
  if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(ch))
    return ['control-character', 'a control character'];
  if (ch === '\ufffd') return ['encoding', 'bytes that are not UTF-8'];
  return ['character', `the unquoted character U+${ch.codePointAt(0)!.toString(16).padStart(4, '0')}`];
}

/** Parse an exec command line; throws CC_ERR_SSH_COMMAND_UNCLASSIFIED for anything not exactly classifiable. */
export function parseCommandLine(text: string): ParsedCommand {
  if (Buffer.byteLength(text, 'utf8') > MAX_COMMAND_BYTES) {
    throw refuse('too-long', `it is longer than ${MAX_COMMAND_BYTES} bytes`);
  }
  // Control characters and undecodable bytes are refused anywhere, quoted or not (tab is a separator).
  for (const ch of text) {
    if (ch === '\t') continue;
    if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029\ufffd]/.test(ch)) {
      const [reason, detail] = describe(ch);
      throw refuse(reason, detail);
    }
  }
  const argv: string[] = [];
  let word: string | null = null;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const ch = text[i]!;
    if (ch === ' ' || ch === '\t') {
      if (word !== null) argv.push(word);
      word = null;
      i++;
      continue;
    }
    if (ch === "'") {
      const end = text.indexOf("'", i + 1);
      if (end === -1) throw refuse('unterminated-quote', 'an unterminated single quote');
      word = (word ?? '') + text.slice(i + 1, end);
      i = end + 1;
      continue;
    }
    if (ch === '"') {
      let j = i + 1;
      let part = '';
      for (; j < n && text[j] !== '"'; j++) {
        const c = text[j]!;
        if (c === '$' || c === '`' || c === '\\') {
          const [reason, detail] = c === '\\' ? ['escape', 'a backslash inside double quotes'] : describe(c);
          throw refuse(reason, `${detail} inside double quotes`);
        }
        part += c;
      }
      if (j >= n) throw refuse('unterminated-quote', 'an unterminated double quote');
      word = (word ?? '') + part;
      i = j + 1;
      continue;
    }
    if (ch === '\\') {
      const next = text[i + 1];
      if (next === undefined || !/^[\x21-\x7e ]$/.test(next)) {
        throw refuse('escape', 'a backslash not followed by a printable character');
      }
      word = (word ?? '') + next;
      i += 2;
      continue;
    }
    if (SAFE.test(ch)) {
      word = (word ?? '') + ch;
      i++;
      continue;
    }
    const [reason, detail] = describe(ch);
    throw refuse(reason, detail);
  }
  if (word !== null) argv.push(word);
  if (argv.length === 0) throw refuse('empty', 'it names no program');
  if (argv.length > MAX_COMMAND_WORDS)
    throw refuse('too-many-words', `it has more than ${MAX_COMMAND_WORDS} words`);
  // `NAME=value cmd` sets the environment of cmd (the program would not be the first word);
  // a program name with `=` in it is refused too, quoted or not.
  if (argv[0]!.includes('=')) throw refuse('assignment', 'an environment assignment before the program');
  if (argv[0] === '') throw refuse('empty', 'the program name is empty');
  // A reserved word in command position is grammar (`if`, `for`, bash's `time`), not a program.
  const first = /^[^'"\\]*?(?=[ \t]|$)/.exec(text.trimStart())?.[0];
  if (first !== undefined && RESERVED.has(first)) throw refuse('reserved-word', `the reserved word ${first}`);
  return { argv, line: quoteArgv(argv) };
}

/** One word quoted for sh: as is when all safe characters, else in single quotes. */
export function quoteWord(word: string): string {
  if (SAFE_WORD.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

export function quoteArgv(argv: readonly string[]): string {
  // The program is always quoted when it is a reserved word, so the shell runs it as a program.
  return argv.map((w, i) => (i === 0 && RESERVED.has(w) ? `'${w}'` : quoteWord(w))).join(' ');
}
