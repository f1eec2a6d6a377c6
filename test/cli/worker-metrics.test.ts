import pino from 'pino';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startAdminServer } from '../../src/admin/admin-server.js';
import { type MetricsRequest, workerMetrics } from '../../src/cli/serve-workers.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

// `serve --workers`: worker 0's /metrics asks the primary for every worker's metrics. When
// that sum cannot be had, the scrape gets a stable code it can act on (503, retry), not
// an internal error with an incident.
describe("the workers' metrics, when they cannot be gathered", () => {
  it('no answer from the primary within the wait: CC_ERR_METRICS_UNAVAILABLE', async () => {
    const asked: MetricsRequest[] = [];
    const gather = await workerMetrics(new Registry(), { send: (m) => asked.push(m), timeoutMs: 30 });
    await expect(gather()).rejects.toMatchObject({ code: 'CC_ERR_METRICS_UNAVAILABLE' });
    expect(asked).toHaveLength(1);
  });

  it('the primary answers without a text (its aggregation failed): the same code, at once', async () => {
    const gather = await workerMetrics(new Registry(), {
      send: (m) =>
        setImmediate(() => process.emit('message', { type: 'coatcheck.metrics', id: m.id }, undefined)),
      timeoutMs: 60_000,
    });
    await expect(gather()).rejects.toMatchObject({ code: 'CC_ERR_METRICS_UNAVAILABLE' });
  });

  it('an answer for another request, or of another kind, is not taken for this one', async () => {
    const gather = await workerMetrics(new Registry(), {
      send: (m) =>
        setImmediate(() => {
          process.emit('message', { type: 'coatcheck.metrics', id: m.id + 1000, text: 'wrong' }, undefined);
          process.emit('message', { type: 'coatcheck.lock.granted', id: m.id }, undefined);
          process.emit('message', { type: 'coatcheck.metrics', id: m.id, text: 'ours 1\n' }, undefined);
        }),
      timeoutMs: 60_000,
    });
    expect(await gather()).toBe('ours 1\n');
  });

  describe('through the admin API', () => {
    let t: TestHome;
    let ctx: Context;
    beforeEach(async () => {
      t = await makeTestHome();
      ctx = await t.open();
    });
    afterEach(async () => {
      await ctx.close();
      t.remove();
    });

    it('/metrics answers 503 with the code, and logs no incident', async () => {
      const gather = await workerMetrics(new Registry(), { send: () => undefined, timeoutMs: 30 });
      const lines: string[] = [];
      const log = pino({ level: 'error' }, { write: (line: string) => lines.push(line) });
      const admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, log, { metrics: gather });
      try {
        const res = await fetch(`${admin.url}/metrics`);
        expect(res.status).toBe(503);
        expect(JSON.stringify(await res.json())).toContain('CC_ERR_METRICS_UNAVAILABLE');
        expect(lines.join('')).not.toContain('internal error');
      } finally {
        await admin.close();
      }
    });
  });
});
