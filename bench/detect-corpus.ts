/**
 * The mixed corpus of bench/detect.ts (JSON logs, access logs, source code, psql rows, prose,
 * with the labeled corpus's secrets and hard negatives mixed in), shared with
 * bench/known-secret-scan.ts so both measure the same bytes.
 */
import type { createRng } from '../src/detect/synth.js';
import { loadCorpus, materialize } from '../test/detect/corpus.js';

export const MB = 1024 * 1024;

function filler(rng: ReturnType<typeof createRng>): string {
  switch (rng.int(6)) {
    case 0:
      return `{"level":"info","time":${1714557600000 + rng.int(1e6)},"pid":${rng.int(9999)},"hostname":"api-${rng.int(9)}","reqId":"req-${rng.chars('abcdef0123456789', 8)}","msg":"request completed","res":{"statusCode":200},"responseTime":${rng.int(500)}.${rng.int(99)}}\n`;
    case 1:
      return `10.0.${rng.int(255)}.${rng.int(255)} - - [01/May/2024:10:${rng.int(60)}:${rng.int(60)} +0000] "GET /api/v1/items/${rng.int(1e6)}?page=${rng.int(50)} HTTP/1.1" 200 ${rng.int(99999)} "-" "Mozilla/5.0 (X11; Linux x86_64)"\n`;
    case 2:
      return `export async function handle${rng.chars('ABCDEFGH', 3)}(req, res) {\n  const user = await db.users.findOne({ id: req.params.id });\n  if (!user) return res.status(404).json({ error: "not found" });\n  return res.json({ id: user.id, name: user.name, createdAt: user.created_at });\n}\n`;
    case 3:
      return ` ${rng.int(99999)} | order-${rng.chars('0123456789', 6)} | shipped | 2024-05-0${1 + rng.int(9)} 10:00:00+00 | ${rng.int(999)}.${rng.int(99)}\n`;
    case 4:
      return 'The quarterly report covers revenue, churn and the roadmap. Please review the attached numbers before the meeting and flag anything unusual so we can discuss it with the team.\n';
    default:
      return `ts=2024-05-01T10:00:00Z level=debug msg="cache hit" key=user:${rng.int(1e6)} ttl=300 size=${rng.int(4096)}\n`;
  }
}

/** About `mb` MB of mixed text, drawn from `rng` (the same seed gives the same bytes). */
export function buildCorpus(mb: number, rng: ReturnType<typeof createRng>): Buffer {
  const docs = loadCorpus()
    .filter((r) => r.kind !== 'known')
    .map((r) => `${materialize(r).text}\n`);
  const parts: string[] = [];
  let size = 0;
  while (size < mb * MB) {
    // About one labeled document (a secret or a hard negative) per 20 filler lines.
    const piece = rng.int(20) === 0 ? docs[rng.int(docs.length)]! : filler(rng);
    parts.push(piece);
    size += piece.length;
  }
  return Buffer.from(parts.join(''));
}
