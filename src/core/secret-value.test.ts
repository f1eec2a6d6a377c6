import { inspect } from 'node:util';
import { expect, it } from 'vitest';
import { SecretValue } from './secret-value.js';

it('redacts itself in every implicit conversion', () => {
  const canary = 'canary-SecretValue-7f3a9';
  const value = new SecretValue(Buffer.from(canary));
  expect(`${value}`).not.toContain(canary);
  expect(JSON.stringify({ value })).not.toContain(canary);
  expect(inspect({ nested: { value } })).not.toContain(canary);
  expect(value.revealText()).toBe(canary);
});
