import { describe, expect, it } from 'vitest';
import { systemClock } from '../core/clock.js';
import { GatewaySession } from './session.js';

// A session's end reaches whoever listens, however they listen: the AbortSignal (made on
// first use) and the cheap `onTerminated` hook the per-request path uses.

describe('GatewaySession termination', () => {
  it('aborts a signal taken before the end, with the code as its reason', () => {
    const session = new GatewaySession('http', systemClock);
    const signal = session.signal;
    expect(signal.aborted).toBe(false);
    session.terminate('CC_ERR_TICKET_REVOKED');
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toBe('CC_ERR_TICKET_REVOKED');
  });

  it('gives an already aborted signal when it is first asked for after the end', () => {
    const session = new GatewaySession('http', systemClock);
    session.terminate('CC_ERR_AGENT_REVOKED');
    expect(session.signal.aborted).toBe(true);
    expect(session.signal.reason).toBe('CC_ERR_AGENT_REVOKED');
    expect(session.signal).toBe(session.signal);
  });

  it('tells onTerminated listeners once, at once if the session already ended', () => {
    const session = new GatewaySession('http', systemClock);
    const heard: string[] = [];
    session.onTerminated((code) => heard.push(`a:${code}`));
    session.onTerminated((code) => heard.push(`b:${code}`));
    session.terminate('CC_ERR_TICKET_REVOKED');
    session.terminate('CC_ERR_AGENT_REVOKED'); // the first end stands
    session.onTerminated((code) => heard.push(`late:${code}`));
    expect(heard).toEqual([
      'a:CC_ERR_TICKET_REVOKED',
      'b:CC_ERR_TICKET_REVOKED',
      'late:CC_ERR_TICKET_REVOKED',
    ]);
  });

  it('does not tell a listener that was taken off, and keeps telling the others', () => {
    const session = new GatewaySession('http', systemClock);
    const heard: string[] = [];
    const off = session.onTerminated(() => heard.push('removed'));
    session.onTerminated(() => heard.push('kept'));
    off();
    off(); // twice is harmless
    session.terminate('CC_ERR_WORKFLOW_ENDED');
    expect(heard).toEqual(['kept']);
  });

  it('tells every listener even when one throws, and says so without the error text', async () => {
    const session = new GatewaySession('http', systemClock);
    const signal = session.signal;
    const heard: string[] = [];
    session.onTerminated(() => heard.push('first'));
    session.onTerminated(() => {
      throw new TypeError('listener broke: sk_live_should_not_be_echoed');
    });
    session.onTerminated(() => heard.push('third'));
    const warned = new Promise<Error>((resolve) => process.once('warning', resolve));
    expect(() => session.terminate('CC_ERR_TICKET_REVOKED')).not.toThrow();
    expect(heard).toEqual(['first', 'third']);
    expect(signal.aborted).toBe(true);
    const warning = await warned;
    expect(warning.message).toContain('TypeError');
    expect(warning.message).not.toContain('sk_live');
  });
});
