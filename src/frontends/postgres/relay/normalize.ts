import { parseSync } from 'libpg-query';
import { CoatcheckError } from '../../../core/errors.js';

/**
 * The normalised text of one statement, the text policy rules (`like`) match and
 * approvers read: comments removed, each run of whitespace one space, every unquoted
 * word upper-cased (ASCII), string literals, quoted identifiers and dollar-quoted bodies
 * kept as written. So `delete  from users -- x` reads `DELETE FROM USERS`.
 *
 * PostgreSQL folds unquoted words to lower case and treats comments as whitespace, so the
 * normalised text means the same statement; that is checked, not assumed: both texts are
 * parsed and their trees (without source positions) must be equal, or the statement is
 * refused (CC_ERR_PG_STATEMENT_UNPARSABLE).
 */
export function normalizeStatement(source: string, standardStrings: boolean): string {
  const key = `${standardStrings ? '1' : '0'}${source}`;
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  const text = lex(source, standardStrings);
  if (!sameTree(source, text)) {
    throw new CoatcheckError(
      'CC_ERR_PG_STATEMENT_UNPARSABLE',
      'statement refused: its normalised text does not parse to the same statement',
    );
  }
  if (source.length <= MAX_CACHED) {
    if (cache.size >= CAPACITY) cache.delete(cache.keys().next().value!);
    cache.set(key, text);
  }
  return text;
}

/** Normalised texts of recent statements (bounded; a repeated statement is not parsed again). */
const cache = new Map<string, string>();
const CAPACITY = 5000;
const MAX_CACHED = 16 * 1024;

const WORD_START = /[A-Za-z_\u0080-\uffff]/;
const WORD_PART = /[A-Za-z0-9_$\u0080-\uffff]/;
const DOLLAR_TAG = /^\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/;

function lex(sql: string, standardStrings: boolean): string {
  let out = '';
  let space = false;
  let newline = false;
  let lastWasString = false;
  const emit = (s: string, isString = false): void => {
    if (space && out.length > 0) out += lastWasString && newline && isString ? '\n' : ' ';
    space = false;
    newline = false;
    out += s;
    lastWasString = isString;
  };
  let i = 0;
  const n = sql.length;
  while (i < n) {
    const c = sql[i]!;
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f' || c === '\v') {
      space = true;
      if (c === '\n' || c === '\r') newline = true;
      i++;
    } else if (c === '-' && sql[i + 1] === '-') {
      while (i < n && sql[i] !== '\n' && sql[i] !== '\r') i++;
      space = true;
    } else if (c === '/' && sql[i + 1] === '*') {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') {
          depth++;
          i += 2;
        } else if (sql[i] === '*' && sql[i + 1] === '/') {
          depth--;
          i += 2;
        } else i++;
      }
      space = true;
    } else if (c === "'") {
      // An E'' string (the word just emitted is E) or any string with standard_conforming_strings off takes backslash escapes.
      const escapes = !standardStrings || /(?:^|[^A-Za-z0-9_$])[Ee]$/.test(out);
      let j = i + 1;
      while (j < n) {
        if (escapes && sql[j] === '\\') j += 2;
        else if (sql[j] === "'") {
          if (sql[j + 1] === "'") j += 2;
          else break;
        } else j++;
      }
      const attached = !space && /[A-Za-z&]$/.test(out); // E'', B'', X'', N'', U&''
      if (attached) out += sql.slice(i, j + 1);
      else emit(sql.slice(i, j + 1), true);
      lastWasString = true;
      i = j + 1;
    } else if (c === '"') {
      let j = i + 1;
      while (j < n) {
        if (sql[j] === '"') {
          if (sql[j + 1] === '"') j += 2;
          else break;
        } else j++;
      }
      if (!space && /&$/.test(out)) out += sql.slice(i, j + 1);
      else emit(sql.slice(i, j + 1));
      i = j + 1;
    } else if (c === '$' && !(out.length > 0 && !space && WORD_PART.test(out[out.length - 1]!))) {
      const tag = DOLLAR_TAG.exec(sql.slice(i, i + 256))?.[0];
      if (tag === undefined) {
        let j = i + 1;
        while (j < n && /[0-9]/.test(sql[j]!)) j++;
        emit(sql.slice(i, j));
        i = j;
      } else {
        const close = sql.indexOf(tag, i + tag.length);
        const end = close === -1 ? n : close + tag.length;
        emit(sql.slice(i, end), true);
        i = end;
      }
    } else if (WORD_START.test(c)) {
      let j = i + 1;
      while (j < n && WORD_PART.test(sql[j]!)) j++;
      emit(sql.slice(i, j).replace(/[a-z]+/g, (w) => w.toUpperCase()));
      i = j;
    } else if (/[0-9.]/.test(c)) {
      let j = i + 1;
      while (j < n && /[0-9A-Za-z_.]/.test(sql[j]!)) j++;
      emit(sql.slice(i, j).replace(/[a-z]+/g, (w) => w.toUpperCase()));
      i = j;
    } else {
      emit(c);
      i++;
    }
  }
  return out;
}

function stripPositions(_key: string, value: unknown): unknown {
  if (_key === 'location' || _key === 'stmt_location' || _key === 'stmt_len') return undefined;
  return value;
}

function sameTree(a: string, b: string): boolean {
  try {
    return JSON.stringify(parseSync(a), stripPositions) === JSON.stringify(parseSync(b), stripPositions);
  } catch {
    return false;
  }
}
