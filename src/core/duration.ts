import { CoatcheckError } from './errors.js';

const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const DURATION_RE = /^([1-9][0-9]{0,8})(s|m|h|d)$/;

/** Parse `90s`, `15m`, `8h`, `7d` into milliseconds. */
export function parseDuration(text: string, field = 'duration'): number {
  const match = DURATION_RE.exec(text.trim());
  if (!match) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `${field} must look like 90s, 15m, 8h or 7d`, {
      details: { field },
    });
  }
  return Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
}
