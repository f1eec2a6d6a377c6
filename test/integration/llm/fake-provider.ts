import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ProviderRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingMessage['headers'];
  readonly body: string;
}

export interface FakeProvider {
  readonly url: string;
  /** Every request, exactly as it arrived (headers and body). */
  readonly received: ProviderRequest[];
  /** Text the next responses append to the assistant's answer (to plant a secret in a response). */
  say: string;
  close(): Promise<void>;
}

function sse(res: ServerResponse, events: unknown[]): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  let i = 0;
  const next = () => {
    if (i >= events.length) {
      res.end('data: [DONE]\n\n');
      return;
    }
    res.write(`data: ${JSON.stringify(events[i++])}\n\n`);
    setTimeout(next, 5);
  };
  next();
}

/**
 * A model provider that records what it received and answers in the OpenAI
 * (chat completions, responses) or Anthropic (messages) shape, streaming when asked.
 */
export async function startFakeProvider(): Promise<FakeProvider> {
  const received: ProviderRequest[] = [];
  const state = { say: '' };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      received.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      const json = body === '' ? {} : (JSON.parse(body) as { stream?: boolean });
      const answer = `ok${state.say}`;
      if (req.url?.endsWith('/messages')) {
        const text = JSON.stringify({
          id: 'msg_1',
          type: 'message',
          role: 'assistant',
          content: [{ type: 'text', text: answer }],
        });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(text);
        return;
      }
      if (req.url?.endsWith('/models')) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ data: [{ id: 'fake-1' }] }));
        return;
      }
      const tools = (json as { tools?: Array<{ function?: { name?: string } }> }).tools;
      if (Array.isArray(tools) && tools.length > 0) {
        // The "model" calls the first tool with the first ticket it was shown (it only ever sees tickets).
        const ticket = /cct_[0-9A-Za-z]{28}/.exec(body)?.[0] ?? '';
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            id: 'chatcmpl-2',
            object: 'chat.completion',
            choices: [
              {
                index: 0,
                finish_reason: 'tool_calls',
                message: {
                  role: 'assistant',
                  content: null,
                  tool_calls: [
                    {
                      id: 'call_1',
                      type: 'function',
                      function: {
                        name: tools[0]!.function?.name ?? '',
                        arguments: JSON.stringify({ text: ticket }),
                      },
                    },
                  ],
                },
              },
            ],
          }),
        );
        return;
      }
      if (json.stream === true) {
        const words = answer.match(/\S+\s*/g) ?? [];
        sse(
          res,
          words.map((w) => ({ choices: [{ index: 0, delta: { content: w } }] })),
        );
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'chatcmpl-1',
          object: 'chat.completion',
          choices: [{ index: 0, message: { role: 'assistant', content: answer } }],
        }),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    get say() {
      return state.say;
    },
    set say(value: string) {
      state.say = value;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
