import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../core/errors.js';
import { MAX_COMMAND_BYTES, parseCommandLine, quoteArgv } from './command-line.js';

function reason(line: string): string {
  try {
    parseCommandLine(line);
  } catch (error) {
    expect(error).toBeInstanceOf(CoatcheckError);
    expect((error as CoatcheckError).code).toBe('CC_ERR_SSH_COMMAND_UNCLASSIFIED');
    return String((error as CoatcheckError).details?.reason);
  }
  return 'accepted';
}

/** What sh itself makes of a line: one argument per line, NUL-separated. */
function shArgv(line: string): string[] {
  const out = execFileSync('sh', ['-c', `set -- ${line}; for a in "$@"; do printf '%s\\0' "$a"; done`]);
  return out.toString('utf8').split('\0').slice(0, -1);
}

describe('ssh command lines: what sh would run, or a refusal', () => {
  it('reads plain, single-quoted, double-quoted and backslash-escaped words as sh does', () => {
    for (const line of [
      'git log --oneline -5',
      "echo 'two words' three",
      'echo "double quoted" x',
      'echo a\'b\'"c"d',
      'echo a\\ b',
      "grep -e 'x;y' file.txt",
      "printf '%s\\n' \"it's\"",
      "echo ''",
      'ls -la /var/log',
      'echo \'a"b\' "a\'b"',
      'cmd\tsep',
    ]) {
      const parsed = parseCommandLine(line);
      expect(parsed.argv).toEqual(shArgv(line));
      // The forwarded line is read back by sh as the same argv.
      expect(shArgv(parsed.line)).toEqual(parsed.argv);
    }
  });

  it('refuses control operators, chaining and pipes', () => {
    for (const line of ['ls; rm -rf /', 'ls && id', 'ls || id', 'ls | sh', 'ls & id', 'ls ;id', 'true&&id']) {
      expect(reason(line)).toBe('control-operator');
    }
  });

  it('refuses substitutions, expansions and redirections, quoted in double quotes too', () => {
    expect(reason('echo $(id)')).toBe('expansion');
    expect(reason('echo `id`')).toBe('substitution');
    expect(reason('echo "$(id)"')).toBe('expansion');
    expect(reason('echo "`id`"')).toBe('substitution');
    expect(reason('echo $HOME')).toBe('expansion');
    expect(reason('echo $\u007bIFS}')).toBe('expansion');
    expect(reason('cat < /etc/shadow')).toBe('redirection');
    expect(reason('echo x > /etc/passwd')).toBe('redirection');
    expect(reason('echo x>>f')).toBe('redirection');
    expect(reason('ls *')).toBe('glob');
    expect(reason('ls /etc/pass?d')).toBe('glob');
    expect(reason('ls [a]')).toBe('glob');
    expect(reason('echo {a,b}')).toBe('brace');
    expect(reason('cat ~/.ssh/id_rsa')).toBe('tilde');
    expect(reason('(id)')).toBe('subshell');
    expect(reason('echo x # comment')).toBe('comment');
    expect(reason('! id')).toBe('negation');
    expect(reason('echo "a\\"b"')).toBe('escape');
  });

  it('refuses line breaks and control characters anywhere, quoted or not', () => {
    expect(reason('ls\nid')).toBe('newline');
    expect(reason("echo 'a\nid'")).toBe('newline');
    expect(reason('ls\rid')).toBe('newline');
    expect(reason('ls\u0000id')).toBe('control-character');
    expect(reason("echo '\u001b]52;c;x\u0007'")).toBe('control-character');
    expect(reason('echo \u2028')).toBe('control-character');
    expect(reason('echo \ufffd')).toBe('encoding');
  });

  it('refuses an environment assignment before the program, and reserved words', () => {
    expect(reason('LD_PRELOAD=/tmp/x.so ls')).toBe('assignment');
    expect(reason("'PATH=/tmp' ls")).toBe('assignment');
    expect(reason('if true')).toBe('reserved-word');
    expect(reason('time id')).toBe('reserved-word');
    expect(reason('for x in a')).toBe('reserved-word');
    // Quoted, a reserved word is a program name, and stays quoted when forwarded.
    expect(parseCommandLine("'time' id").line).toBe("'time' id");
  });

  it('refuses empty lines, unterminated quotes and lines beyond the bounds', () => {
    expect(reason('')).toBe('empty');
    expect(reason('   ')).toBe('empty');
    expect(reason("''")).toBe('empty');
    expect(reason("echo 'open")).toBe('unterminated-quote');
    expect(reason('echo "open')).toBe('unterminated-quote');
    expect(reason('echo x\\')).toBe('escape');
    expect(reason(`echo ${'a'.repeat(MAX_COMMAND_BYTES)}`)).toBe('too-long');
    expect(reason(`echo ${'a '.repeat(600)}`)).toBe('too-many-words');
  });

  it('never forwards text the shell would read as syntax: each argument quoted unless all safe characters', () => {
    const argv = ['echo', "it's", '$(id)', ';', 'a b', '`x`', '*', '-n', ''];
    const line = quoteArgv(argv);
    expect(shArgv(line)).toEqual(argv);
  });
});
