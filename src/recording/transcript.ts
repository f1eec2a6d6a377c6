import type { Payload, RecordingEvent } from './model.js';

/**
 * Transcripts of a recording for a human (`coatcheck sessions replay`): psql-like for
 * PostgreSQL, request/response lines for HTTP, MCP and LLM, a terminal's view for SSH
 * commands and Kubernetes exec streams. Pure: the caller escapes
 * terminal control characters (visibleControls) before anything reaches a terminal —
 * every string here came from the agent or the upstream.
 */

export interface TranscriptLine {
  /** Milliseconds since the session started. */
  readonly at: number;
  readonly text: string;
}

function payloadText(p: unknown): string {
  if (p === null || p === undefined || typeof p !== 'object') return '';
  const payload = p as Payload;
  const body =
    payload.text !== undefined
      ? payload.text
      : payload.base64 !== undefined
        ? `[binary, ${payload.bytes} bytes; base64] ${payload.base64}`
        : '';
  return payload.truncated === true
    ? `${body}\n[… ${payload.bytes - Buffer.byteLength(payload.text ?? '', 'utf8')} more bytes not recorded]`
    : body;
}

function cell(value: unknown): string {
  if (value === null) return '';
  return payloadText(value).replace(/\n/g, '\\n');
}

function table(columns: readonly string[], rows: ReadonlyArray<ReadonlyArray<unknown>>): string[] {
  const cells = rows.map((row) => columns.map((_, i) => cell(row[i] ?? null)));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)));
  const line = (values: readonly string[]) =>
    ` ${values.map((v, i) => v.padEnd(widths[i]!)).join(' | ')}`.trimEnd();
  return [
    line(columns.map((c, i) => c.padStart(Math.floor((widths[i]! + c.length) / 2)))),
    widths.map((w) => '-'.repeat(w + 2)).join('+'),
    ...cells.map(line),
  ];
}

function pgLine(event: RecordingEvent): string | null {
  const d = event.data as Record<string, unknown>;
  switch (event.kind) {
    case 'pg.query':
      return `=> ${String(d.sql)}`;
    case 'pg.parse':
      return `=> [prepare${d.name === '' ? '' : ` ${String(d.name)}`}] ${String(d.sql)}`;
    case 'pg.bind': {
      const params = Array.isArray(d.params) ? d.params : [];
      if (params.length === 0) return null;
      return `   [bind ${params.map((p, i) => `$${i + 1} = ${p === null ? 'NULL' : `'${cell(p)}'`}`).join(', ')}]`;
    }
    case 'pg.result': {
      const lines: string[] = [];
      const rows = Array.isArray(d.rows) ? (d.rows as unknown[][]) : [];
      const count = Number(d.rowCount ?? rows.length);
      if (Array.isArray(d.columns)) {
        lines.push(...table(d.columns as string[], rows));
        if (typeof d.rowsNotKept === 'number') lines.push(`[… ${d.rowsNotKept} more rows not recorded]`);
        lines.push(`(${count} ${count === 1 ? 'row' : 'rows'})`);
      } else if (typeof d.tag === 'string' && d.tag !== '') {
        lines.push(d.tag);
      }
      return lines.length === 0 ? null : `${lines.join('\n')}\n`;
    }
    case 'pg.error':
      return [
        `${String(d.severity ?? 'ERROR')}:  ${String(d.message ?? '')}`,
        ...(d.detail === undefined ? [] : [`DETAIL:  ${String(d.detail)}`]),
        ...(d.hint === undefined ? [] : [`HINT:  ${String(d.hint)}`]),
      ].join('\n');
    case 'pg.notice':
      return `${String(d.severity ?? 'NOTICE')}:  ${String(d.message ?? '')}`;
    case 'pg.notification':
      return `Asynchronous notification "${String(d.channel)}" with payload "${String(d.payload)}" received.`;
    case 'pg.copy':
      return `${event.dir === 'in' ? '>' : '<'} [copy] ${payloadText(d.data)}`;
    case 'pg.copy.fail':
      return `> [copy failed] ${String(d.message)}`;
    case 'pg.terminate':
      return '=> \\q';
    default:
      return null;
  }
}

function headerLines(prefix: string, headers: unknown): string[] {
  if (!Array.isArray(headers)) return [];
  return (headers as Array<[string, string]>).map(([name, value]) => `${prefix} ${name}: ${value}`);
}

function httpLine(event: RecordingEvent): string | null {
  const d = event.data as Record<string, unknown>;
  switch (event.kind) {
    case 'http.request': {
      const body = payloadText(d.body);
      return [
        `> ${String(d.method)} ${String(d.url)} HTTP/${String(d.httpVersion ?? '1.1')}`,
        ...headerLines('>', d.headers),
        ...(body === '' ? [] : ['>', body]),
      ].join('\n');
    }
    case 'http.response':
      return [`< HTTP ${String(d.status)}`, ...headerLines('<', d.headers), '<'].join('\n');
    case 'http.body':
      return payloadText(d.body);
    case 'sse.data':
      return payloadText(d.data);
    case 'mcp.message':
      return `${event.dir === 'in' ? '>' : '<'} ${payloadText(d.message)}`;
    case 'ws.message':
      return `${event.dir === 'in' ? '>' : '<'} [websocket ${String(d.opcode ?? 'message')}] ${payloadText(d.data)}`;
    default:
      return null;
  }
}

/** SSH and Kubernetes exec streams as a terminal showed them: the command, then its output. */
function streamLine(event: RecordingEvent): string | null {
  const d = event.data as Record<string, unknown>;
  switch (event.kind) {
    case 'ssh.exec':
      return `$ ${String(d.command)}`;
    case 'ssh.shell': {
      const pty = d.pty as { term?: unknown; cols?: unknown; rows?: unknown } | null | undefined;
      return pty === null || pty === undefined
        ? '-- shell (no terminal)'
        : `-- shell (${String(pty.term ?? '')} ${String(pty.cols)}x${String(pty.rows)}; sessions replay --asciicast plays it)`;
    }
    case 'ssh.resize':
      return null;
    case 'ssh.data':
    case 'k8s.stream': {
      const text = payloadText(d.data);
      if (text === '') return null;
      const stream = String(d.stream ?? d.channel ?? '');
      return stream === 'stdin' ? `> ${text}` : stream === 'stderr' ? `[stderr] ${text}` : text;
    }
    case 'ssh.exit':
      return `[exit ${String(d.exit)}]`;
    default:
      return null;
  }
}

function gatewayLine(event: RecordingEvent): string | null {
  const d = event.data as Record<string, unknown>;
  switch (event.kind) {
    case 'gateway.refused':
      return `-- coatcheck refused: ${String(d.code)}${d.status ? ` (${String(d.status)})` : ''} ${String(d.message ?? '')}`.trimEnd();
    case 'session.terminated':
      return `-- coatcheck ended the session: ${String(d.code)}`;
    case 'recording.truncated':
      return `-- recording truncated at ${String(d.maxSessionBytes)} bytes; later events were counted, not kept`;
    case 'session.end':
      return `-- session ended: ${String(d.outcome)}`;
    default:
      return null;
  }
}

/** The transcript of a recording: one block per event a person would have seen. */
export function transcript(events: readonly RecordingEvent[]): TranscriptLine[] {
  const out: TranscriptLine[] = [];
  // A shell on a terminal echoes what is typed: its input would show twice.
  const echoing = new Set<unknown>();
  for (const event of events) {
    if (event.kind === 'ssh.shell' && event.data.pty !== null) echoing.add(event.data.channel);
    if (event.kind === 'ssh.data' && event.data.stream === 'stdin' && echoing.has(event.data.channel))
      continue;
    const text = event.kind.startsWith('pg.')
      ? pgLine(event)
      : ['http.', 'sse.', 'ws.', 'mcp.'].some((prefix) => event.kind.startsWith(prefix))
        ? httpLine(event)
        : event.kind.startsWith('ssh.') || event.kind === 'k8s.stream'
          ? streamLine(event)
          : (gatewayLine(event) ?? `-- ${event.kind} ${JSON.stringify(event.data)}`);
    if (text !== null) out.push({ at: event.at, text });
  }
  return out;
}
