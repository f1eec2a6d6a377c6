import { timingSafeEqual } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { encodeBase62Fixed, randomBase62 } from './base62.js';
import { CoatcheckError } from './errors.js';

/**
 * Ticket: `cct_` + 22 base62 random characters (>= 128 bits) + CRC32 of those 22
 * characters as 6 base62 digits. 32 characters, safe in headers, URLs, JSON, shells and
 * connection-string passwords. See docs/adr/0001-ticket-format.md.
 *
 * Agent keys share the construction with another prefix and a longer body.
 */
export const TICKET_PREFIX = 'cct_';
export const TICKET_RANDOM_LENGTH = 22;
export const TICKET_LENGTH = TICKET_PREFIX.length + TICKET_RANDOM_LENGTH + 6;
export const AGENT_KEY_PREFIX = 'cca_';
export const AGENT_KEY_RANDOM_LENGTH = 37;
export const AGENT_KEY_LENGTH = AGENT_KEY_PREFIX.length + AGENT_KEY_RANDOM_LENGTH + 6;
/** Subtask keys (workflow nodes' credentials): the agent-key construction with its own prefix. */
export const SUBTASK_KEY_PREFIX = 'ccs_';

/** Relay keys (`relay create`): the agent-key construction with its own prefix. */
export const RELAY_KEY_PREFIX = 'ccr_';

/** Finds ticket-shaped text anywhere (checksum is verified separately). */
export const TICKET_PATTERN = /cct_[0-9A-Za-z]{28}/g;

function checksumOf(body: string): string {
  return encodeBase62Fixed(crc32(body) >>> 0, 6);
}

function mint(prefix: string, randomLength: number): string {
  const body = randomBase62(randomLength);
  return prefix + body + checksumOf(body);
}

export function mintTicket(): string {
  return mint(TICKET_PREFIX, TICKET_RANDOM_LENGTH);
}

export function mintAgentKey(): string {
  return mint(AGENT_KEY_PREFIX, AGENT_KEY_RANDOM_LENGTH);
}

export function mintSubtaskKey(): string {
  return mint(SUBTASK_KEY_PREFIX, AGENT_KEY_RANDOM_LENGTH);
}

export function mintRelayKey(): string {
  return mint(RELAY_KEY_PREFIX, AGENT_KEY_RANDOM_LENGTH);
}

type Shape = 'ok' | 'malformed' | 'checksum';

function checkShape(text: string, prefix: string, randomLength: number): Shape {
  if (text.length !== prefix.length + randomLength + 6 || !text.startsWith(prefix)) return 'malformed';
  for (let i = prefix.length; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const ok = (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
    if (!ok) return 'malformed';
  }
  const body = text.slice(prefix.length, prefix.length + randomLength);
  const expected = Buffer.from(checksumOf(body));
  const given = Buffer.from(text.slice(prefix.length + randomLength));
  return timingSafeEqual(expected, given) ? 'ok' : 'checksum';
}

/** True when `text` is exactly a ticket with a valid checksum. */
export function isTicket(text: string): boolean {
  return checkShape(text, TICKET_PREFIX, TICKET_RANDOM_LENGTH) === 'ok';
}

/** Throws CC_ERR_TICKET_MALFORMED or CC_ERR_TICKET_CHECKSUM; the message never echoes the input. */
export function assertTicket(text: string): void {
  const shape = checkShape(text, TICKET_PREFIX, TICKET_RANDOM_LENGTH);
  if (shape === 'malformed') {
    throw new CoatcheckError(
      'CC_ERR_TICKET_MALFORMED',
      'not a ticket: expected cct_ followed by 28 base62 characters',
    );
  }
  if (shape === 'checksum') {
    throw new CoatcheckError(
      'CC_ERR_TICKET_CHECKSUM',
      'ticket checksum does not match: it was mistyped or altered',
    );
  }
}

export function assertAgentKey(text: string): void {
  if (checkShape(text, AGENT_KEY_PREFIX, AGENT_KEY_RANDOM_LENGTH) !== 'ok') {
    throw new CoatcheckError(
      'CC_ERR_AGENT_KEY_MALFORMED',
      'not an agent key, or its checksum does not match',
    );
  }
}

export function assertSubtaskKey(text: string): void {
  if (checkShape(text, SUBTASK_KEY_PREFIX, AGENT_KEY_RANDOM_LENGTH) !== 'ok') {
    throw new CoatcheckError(
      'CC_ERR_WORKFLOW_KEY_MALFORMED',
      'not a subtask key, or its checksum does not match',
    );
  }
}

export function assertRelayKey(text: string): void {
  if (checkShape(text, RELAY_KEY_PREFIX, AGENT_KEY_RANDOM_LENGTH) !== 'ok') {
    throw new CoatcheckError('CC_ERR_RELAY_KEY_MALFORMED', 'not a relay key, or its checksum does not match');
  }
}
