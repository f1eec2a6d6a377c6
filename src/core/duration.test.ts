import { expect, it } from 'vitest';
import { parseDuration } from './duration.js';

it('parses durations and rejects everything else with a stable code', () => {
  expect(parseDuration('90s')).toBe(90_000);
  expect(parseDuration('15m')).toBe(900_000);
  expect(parseDuration('8h')).toBe(28_800_000);
  expect(parseDuration('7d')).toBe(604_800_000);
  for (const bad of ['', '0s', '15', 'm', '1.5h', '-1h', '15 m', '1w', '9999999999s']) {
    expect(() => parseDuration(bad, '--ttl')).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_INVALID_ARGUMENT',
        message: '--ttl must look like 90s, 15m, 8h or 7d',
      }),
    );
  }
});
