import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BASE62_ALPHABET } from './base62.js';
import {
  assertAgentKey,
  assertTicket,
  isTicket,
  mintAgentKey,
  mintTicket,
  TICKET_LENGTH,
} from './ticket-format.js';

describe('ticket format', () => {
  it('mints 32-character tickets with a valid checksum', () => {
    const ticket = mintTicket();
    expect(ticket).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(ticket.length).toBe(TICKET_LENGTH);
    expect(TICKET_LENGTH).toBe(32);
    expect(isTicket(ticket)).toBe(true);
    expect(() => assertTicket(ticket)).not.toThrow();
  });

  it('never repeats', () => {
    const seen = new Set(Array.from({ length: 10_000 }, () => mintTicket()));
    expect(seen.size).toBe(10_000);
  });

  it('tells a mistyped ticket (checksum) from text that is not a ticket', () => {
    const ticket = mintTicket();
    const position = 4 + 5;
    const swapped = ticket[position] === 'a' ? 'b' : 'a';
    const mistyped = ticket.slice(0, position) + swapped + ticket.slice(position + 1);
    expect(() => assertTicket(mistyped)).toThrow(expect.objectContaining({ code: 'CC_ERR_TICKET_CHECKSUM' }));
    expect(() => assertTicket('cct_short')).toThrow(
      expect.objectContaining({ code: 'CC_ERR_TICKET_MALFORMED' }),
    );
    expect(() => assertTicket(`xyz_${ticket.slice(4)}`)).toThrow(
      expect.objectContaining({ code: 'CC_ERR_TICKET_MALFORMED' }),
    );
    expect(() => assertTicket(ticket.slice(0, 31) + '-')).toThrow(
      expect.objectContaining({ code: 'CC_ERR_TICKET_MALFORMED' }),
    );
  });

  it('detects every single-character substitution in the random part', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 4, max: 25 }),
        fc.constantFrom(...BASE62_ALPHABET.split('')),
        (position, replacement) => {
          const ticket = mintTicket();
          fc.pre(ticket[position] !== replacement);
          const altered = ticket.slice(0, position) + replacement + ticket.slice(position + 1);
          return !isTicket(altered);
        },
      ),
    );
  });

  it('error messages never echo the presented text', () => {
    const ticket = mintTicket();
    const altered = ticket.slice(0, 31) + (ticket[31] === 'Z' ? 'Y' : 'Z');
    try {
      assertTicket(altered);
      expect.unreachable();
    } catch (error) {
      expect(String((error as Error).message)).not.toContain(altered.slice(4, 26));
    }
  });

  it('agent keys have their own prefix and checksum', () => {
    const key = mintAgentKey();
    expect(key).toMatch(/^cca_[0-9A-Za-z]{43}$/);
    expect(() => assertAgentKey(key)).not.toThrow();
    expect(() => assertAgentKey(key.slice(0, -1) + (key.endsWith('0') ? '1' : '0'))).toThrow(
      expect.objectContaining({ code: 'CC_ERR_AGENT_KEY_MALFORMED' }),
    );
    expect(isTicket(key)).toBe(false);
  });
});
