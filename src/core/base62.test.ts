import { expect, it } from 'vitest';
import { BASE62_ALPHABET, BASE62_RE, randomBase62 } from './base62.js';
import { newId } from './ids.js';

it('gives exactly the length asked for, in the base62 alphabet, across many pool refills', () => {
  for (const length of [1, 16, 40, 4097]) {
    const text = randomBase62(length);
    expect(text).toHaveLength(length);
    expect(text).toMatch(BASE62_RE);
  }
});

it('never repeats an id (each pooled byte is used once)', () => {
  const ids = new Set(Array.from({ length: 20_000 }, () => newId('ses')));
  expect(ids.size).toBe(20_000);
});

it('is uniform over the alphabet (chi-square over 620,000 characters, 61 degrees of freedom)', () => {
  const counts = new Map<string, number>();
  const text = Array.from({ length: 10_000 }, () => randomBase62(62)).join('');
  for (const c of text) counts.set(c, (counts.get(c) ?? 0) + 1);
  expect(counts.size).toBe(62);
  const expected = text.length / 62;
  let chi = 0;
  for (const c of BASE62_ALPHABET) chi += ((counts.get(c) ?? 0) - expected) ** 2 / expected;
  // The 99.99th percentile of chi-square with 61 degrees of freedom is about 115; a bias
  // from `byte % 62` without rejection (the first 8 characters 25% more often) gives ~4,000.
  expect(chi).toBeLessThan(115);
});
