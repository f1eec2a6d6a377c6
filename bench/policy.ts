// Policy decisions per second: the decision cache hit path and a full Cedar evaluation
// (every request distinct), side by side. Run: npm run bench:policy
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPolicies } from '../src/policy/load-policies.js';
import { PolicyEngine } from '../src/policy/policy-engine.js';

const N = Number(process.env.BENCH_OPS ?? 50_000);
const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-policy-'));
const file = join(dir, 'p.cedar');
const rules: string[] = [
  '@id("reads") permit(principal, action == Action::"sql:read", resource);',
  '@id("office") permit(principal in Group::"dba", action == Action::"sql:write", resource) when { context.hour >= 9 && context.hour < 18 };',
  '@id("night") @approval("required") permit(principal in Group::"dba", action == Action::"sql:write", resource) unless { context.hour >= 9 && context.hour < 18 };',
  '@id("no-drop") forbid(principal, action, resource) when { context has statement && context.statement like "*DROP*" };',
];
// A realistic set: plus 50 per-connection HTTP rules.
for (let i = 0; i < 50; i++) {
  rules.push(
    `@id("http-${i}") permit(principal in Group::"team${i}", action in [Action::"http:GET", Action::"http:POST"], resource == Connection::"svc${i}");`,
  );
}
writeFileSync(file, rules.join('\n'));
const engine = new PolicyEngine(loadPolicies(file), { timeZone: 'UTC' });
const principal = { kind: 'agent' as const, name: 'a', groups: ['dba', 'team7'] };

function run(label: string, fn: (i: number) => void): number {
  for (let i = 0; i < 1000; i++) fn(i);
  const started = performance.now();
  for (let i = 0; i < N; i++) fn(i);
  const seconds = (performance.now() - started) / 1000;
  const perSecond = N / seconds;
  console.log(
    `  ${label.padEnd(40)} ${perSecond.toFixed(0).padStart(9)} decisions/s  ${((seconds / N) * 1e6).toFixed(1).padStart(6)} µs each`,
  );
  return perSecond;
}

console.log(
  `coatcheck policy bench: ${rules.length} policies, ${N} decisions per case, node ${process.version}`,
);
const cached = run('repeated request (decision cache)', () =>
  engine.decide({
    principal,
    action: 'sql:write',
    resource: { type: 'Connection', id: 'orders' },
    context: { statement: 'UPDATE t SET x = 1' },
  }),
);
const uncached = run('distinct requests (full Cedar evaluation)', (i) =>
  engine.decide({
    principal,
    action: 'sql:write',
    resource: { type: 'Connection', id: 'orders' },
    context: { statement: `UPDATE t SET x = ${i}` },
  }),
);
console.log(`  cache / full evaluation: ${(cached / uncached).toFixed(1)}x`);
rmSync(dir, { recursive: true, force: true });
