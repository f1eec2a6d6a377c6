import { describe, expect, it } from 'vitest';
import type { FieldDescription } from '../protocol/messages.js';
import type { Classification } from '../sql/classify.js';
import { type PortalEntry, type PreparedEntry, ProtocolState, type Run } from './protocol-state.js';

const cls: Classification = { class: 'read', statements: ['SelectStmt'], functions: [], literals: [] };
const field = (name: string): FieldDescription => ({
  name,
  tableOid: 0,
  columnAttr: 0,
  typeOid: 25,
  typeSize: -1,
  typeModifier: -1,
  format: 0,
});

function run(recorded: string, portal: PortalEntry | null = null): Run {
  return {
    recorded,
    cls: 'read',
    tickets: [],
    policyMask: null,
    portal,
    startedAt: 0,
    rows: 0,
    dropped: 0,
    description: null,
    mask: null,
  };
}

function prepared(name: string): PreparedEntry {
  return {
    name,
    recorded: name,
    classification: cls,
    kind: 'select',
    tables: [],
    functions: [],
    normalized: '',
    description: null,
  };
}

describe('ProtocolState (no sockets)', () => {
  it('gives each pipelined simple query its own runs, statement by statement', () => {
    const s = new ProtocolState();
    const a = [run('a1'), run('a2')];
    const b = [run('b1')];
    s.expect({ kind: 'query', runs: a, index: 0, refusal: null });
    s.expect({ kind: 'query', runs: b, index: 0, refusal: null });
    expect(s.description([field('x')])).toBe(a[0]);
    expect(s.rowRun()).toBe(a[0]);
    expect(s.endRun().run).toBe(a[0]);
    expect(s.description([field('y')])).toBe(a[1]);
    expect(s.endRun().run).toBe(a[1]);
    s.ready('I');
    expect(s.description([field('z')])).toBe(b[0]);
    expect(s.rowRun()).toBe(b[0]);
    s.endRun();
    s.ready('T');
    expect(s.txStatus).toBe('T');
    expect(s.pending).toBe(0);
  });

  it('records a Describe on the statement object it named, not on a later one of the same name', () => {
    const s = new ProtocolState();
    const first = prepared('s');
    const second = prepared('s');
    s.expect({ kind: 'describe', statement: first, portal: null, refusal: null });
    s.expect({ kind: 'parse', statement: second, refusal: null });
    s.parameterDescription();
    s.description([field('id')]);
    s.complete('parse');
    expect(first.description?.map((f) => f.name)).toEqual(['id']);
    expect(second.description).toBeNull();
  });

  it('after an error in the extended protocol, drops every slot up to Sync (the server skips them)', () => {
    const s = new ProtocolState();
    const r = run('e');
    s.expect({ kind: 'parse', statement: prepared(''), refusal: null });
    s.expect({ kind: 'bind', refusal: null });
    s.expect({ kind: 'execute', run: r, refusal: null });
    s.expect({ kind: 'sync', refusal: null });
    s.expect({ kind: 'query', runs: [run('next')], index: 0, refusal: null });
    const { slot, skipped } = s.error();
    expect(slot?.kind).toBe('parse');
    expect(skipped.map((x) => x.kind)).toEqual(['bind', 'execute']);
    expect(s.ready('I').kind).toBe('sync');
    expect(s.head()?.kind).toBe('query');
  });

  it('refuses answers out of turn (a protocol error, never a guess)', () => {
    const s = new ProtocolState();
    expect(() => s.ready('I')).toThrow(/out of turn/);
    s.expect({ kind: 'bind', refusal: null });
    expect(() => s.complete('parse')).toThrow(/out of turn/);
    expect(() => s.rowRun()).toThrow(/out of turn/);
  });
});
