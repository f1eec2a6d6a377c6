// The CPU profile of this process's thread over one measured window, and its summary as
// time per operation: shared by bench/http-profile.ts and bench/postgres-profile.ts.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/**
 * Run `measure` under V8's sampling profiler (100 µs); its result and the profile.
 * BENCH_PROFILE_OUT=<file.cpuprofile> keeps the raw profile for a viewer.
 */
export async function profiled<T>(measure: () => Promise<T>): Promise<{ result: T; profile: CpuProfile }> {
  const session = new Session();
  session.connect();
  try {
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 100 });
    await session.post('Profiler.start');
    const result = await measure();
    const { profile } = await session.post('Profiler.stop');
    if (process.env.BENCH_PROFILE_OUT) writeFileSync(process.env.BENCH_PROFILE_OUT, JSON.stringify(profile));
    return { result, profile: profile as CpuProfile };
  } finally {
    session.disconnect();
  }
}

/** A function's label: name, file (the part after src/, bench/, test/ or node_modules/) and line. */
function label(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  const file = url.replace(/^.*\/node_modules\//, '').replace(/^.*\/(src|bench|test)\//, '$1/');
  return `${functionName || '(anonymous)'} ${file}${file === '' ? '' : `:${lineNumber + 1}`}`;
}

/** Print the `top` functions by self and by inclusive time, as µs per operation and % of the thread. */
export function printProfile(
  profile: CpuProfile,
  operations: number,
  options: { unit: string; top: number; digits: number },
): void {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const timeOf = new Map<number, number>();
  let total = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i] ?? 0;
    timeOf.set(profile.samples[i]!, (timeOf.get(profile.samples[i]!) ?? 0) + dt);
    total += dt;
  }
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  for (const [id, t] of timeOf) {
    const own = label(byId.get(id)!);
    self.set(own, (self.get(own) ?? 0) + t);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const l = label(byId.get(cur)!);
      if (seen.has(l)) continue;
      seen.add(l);
      inclusive.set(l, (inclusive.get(l) ?? 0) + t);
    }
  }
  const print = (title: string, table: Map<string, number>) => {
    console.log(`\n${title} (µs per ${options.unit}, % of the thread's time)`);
    for (const [name, t] of [...table].sort((a, b) => b[1] - a[1]).slice(0, options.top)) {
      console.log(
        `${(t / operations).toFixed(options.digits).padStart(8)} ${((100 * t) / total).toFixed(1).padStart(5)}%  ${name}`,
      );
    }
  };
  print('self time', self);
  print('inclusive time', inclusive);
}

interface HeapNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: HeapNode[];
}

/**
 * Run `measure` under V8's sampling heap profiler (a sample every 8 KiB allocated, on
 * average); its result and the bytes allocated by each function (garbage included: the
 * profile keeps samples of objects since collected), for where a collector's work comes from.
 */
export async function heapProfiled<T>(
  measure: () => Promise<T>,
): Promise<{ result: T; bytesBySite: Map<string, number> }> {
  const session = new Session();
  session.connect();
  try {
    await session.post('HeapProfiler.enable');
    await session.post('HeapProfiler.startSampling', {
      samplingInterval: 8192,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: process.env.BENCH_HEAP_SURVIVORS !== '1',
    });
    const result = await measure();
    const { profile } = await session.post('HeapProfiler.stopSampling');
    if (process.env.BENCH_PROFILE_OUT) writeFileSync(process.env.BENCH_PROFILE_OUT, JSON.stringify(profile));
    const bytesBySite = new Map<string, number>();
    const walk = (node: HeapNode) => {
      if (node.selfSize > 0) {
        const site = label({ id: 0, callFrame: node.callFrame });
        bytesBySite.set(site, (bytesBySite.get(site) ?? 0) + node.selfSize);
      }
      for (const child of node.children) walk(child);
    };
    walk((profile as { head: HeapNode }).head);
    return { result, bytesBySite };
  } finally {
    session.disconnect();
  }
}

/** Print the `top` allocation sites as bytes per operation. */
export function printHeapProfile(
  bytesBySite: Map<string, number>,
  operations: number,
  options: { unit: string; top: number },
): void {
  let total = 0;
  for (const bytes of bytesBySite.values()) total += bytes;
  console.log(
    `\nallocated (sampled): ${(total / operations / 1024).toFixed(1)} KiB per ${options.unit}; by function (bytes per ${options.unit}, % of all)`,
  );
  for (const [site, bytes] of [...bytesBySite].sort((a, b) => b[1] - a[1]).slice(0, options.top)) {
    console.log(
      `${(bytes / operations).toFixed(0).padStart(8)} ${((100 * bytes) / total).toFixed(1).padStart(5)}%  ${site}`,
    );
  }
}
