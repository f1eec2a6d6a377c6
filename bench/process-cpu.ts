import { readdirSync, readFileSync } from 'node:fs';

/** User + system CPU seconds a process has used (Linux /proc; clock ticks of 1/100 s), NaN when it cannot be read. */
export function processCpuSeconds(pid: number): number {
  try {
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU seconds of a process and every process below it (`serve --workers`: the primary and
 * its workers), from /proc's children lists; NaN when the root cannot be read.
 */
export function processTreeCpuSeconds(pid: number): number {
  let total = 0;
  const pending = [pid];
  while (pending.length > 0) {
    const next = pending.pop()!;
    const own = processCpuSeconds(next);
    if (Number.isNaN(own)) {
      if (next === pid) return Number.NaN;
      continue; // a child that exited meanwhile
    }
    total += own;
    for (const task of tasksOf(next)) {
      try {
        for (const child of readFileSync(`/proc/${next}/task/${task}/children`, 'utf8').trim().split(' '))
          if (child !== '') pending.push(Number(child));
      } catch {
        // the task ended meanwhile
      }
    }
  }
  return total;
}

function tasksOf(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
}
