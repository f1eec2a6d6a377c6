import type { CoatcheckError } from '../core/errors.js';

/**
 * The contract every front-end's protocol adapter implements (one engine per protocol).
 * The engine owns its wire format; everything between "who is asking, with which tickets,
 * for what" and "what came back" is the shared pipeline (pipeline.ts); listeners, limits,
 * session hooks, the mapping of unexpected failures and shutdown are the gateway driver's
 * (driver.ts, ADR 0016), which runs each client as `mount.serve(sendError, handle)`.
 *
 * `Client` is the protocol's unit of work: an HTTP request/response pair, a PostgreSQL
 * client socket, an MCP session.
 */
export interface Engine<Client> {
  /** Protocol name, as used in audit records, recordings and metrics (`http`, `postgres`). */
  readonly name: string;
  /** Client-side set-up before any upstream exists (handshake, TLS, reading the start of the request). */
  initialize(client: Client): Promise<void>;
  /**
   * Tell the client about a refusal in its own protocol (HTTP status + JSON body,
   * ErrorResponse with a SQLSTATE, ...). Only deliberate errors reach here; anything
   * else is turned into CC_ERR_INTERNAL with an incident id first.
   */
  sendError(client: Client, error: CoatcheckError): void;
  /** Run the client's work through the pipeline until it ends. */
  handle(client: Client): Promise<void>;
}
