import { describe, expect, it } from 'vitest';
import { operations } from './operations.js';
import { ROUTES } from './routes.js';

describe('admin routes table', () => {
  it('names every operation with the method and path operations.ts serves it on', () => {
    const served = Object.fromEntries(
      Object.entries(operations).map(([name, op]) => [name, { method: op.method, path: op.path }]),
    );
    expect(ROUTES).toEqual(served);
  });
});
