/**
 * PostgreSQL wire protocol 3.0 messages, named as the specification names them
 * (https://www.postgresql.org/docs/current/protocol-message-formats.html).
 * Frontend = client → server, backend = server → client.
 */

export const PROTOCOL_3_0 = 196608; // 3 << 16
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

/** Messages that open a connection: no type byte, only a length and a code. */
export type StartupPhaseMessage =
  | {
      readonly type: 'StartupMessage';
      readonly major: number;
      readonly minor: number;
      /** Parameter pairs in order (user, database, application_name, options, _pq_.*). */
      readonly parameters: ReadonlyArray<readonly [string, string]>;
    }
  | { readonly type: 'SSLRequest' }
  | { readonly type: 'GSSENCRequest' }
  | { readonly type: 'CancelRequest'; readonly processId: number; readonly secretKey: number };

export type FrontendMessage =
  | { readonly type: 'Query'; readonly sql: string }
  | {
      readonly type: 'Parse';
      readonly name: string;
      readonly sql: string;
      readonly parameterTypes: readonly number[];
    }
  | {
      readonly type: 'Bind';
      readonly portal: string;
      readonly statement: string;
      readonly parameterFormats: readonly number[];
      readonly parameters: ReadonlyArray<Buffer | null>;
      readonly resultFormats: readonly number[];
    }
  | { readonly type: 'Describe'; readonly kind: 'S' | 'P'; readonly name: string }
  | { readonly type: 'Execute'; readonly portal: string; readonly maxRows: number }
  | { readonly type: 'Close'; readonly kind: 'S' | 'P'; readonly name: string }
  | { readonly type: 'Sync' }
  | { readonly type: 'Flush' }
  | { readonly type: 'CopyData'; readonly data: Buffer }
  | { readonly type: 'CopyDone' }
  | { readonly type: 'CopyFail'; readonly message: string }
  | { readonly type: 'Terminate' }
  /** 'p': PasswordMessage, SASLInitialResponse and SASLResponse share the type byte; the state decides. */
  | { readonly type: 'PasswordMessage'; readonly data: Buffer }
  | { readonly type: 'FunctionCall'; readonly data: Buffer };

export interface FieldDescription {
  readonly name: string;
  readonly tableOid: number;
  readonly columnAttr: number;
  readonly typeOid: number;
  readonly typeSize: number;
  readonly typeModifier: number;
  readonly format: number;
}

/** ErrorResponse / NoticeResponse fields, keyed by their one-byte code (S, V, C, M, D, H, P, ...). */
export type NoticeFields = ReadonlyArray<readonly [string, string]>;

export type BackendMessage =
  | { readonly type: 'Authentication'; readonly code: number; readonly data: Buffer }
  | { readonly type: 'BackendKeyData'; readonly processId: number; readonly secretKey: number }
  | { readonly type: 'ParameterStatus'; readonly name: string; readonly value: string }
  | { readonly type: 'ReadyForQuery'; readonly status: 'I' | 'T' | 'E' }
  | { readonly type: 'ErrorResponse'; readonly fields: NoticeFields }
  | { readonly type: 'NoticeResponse'; readonly fields: NoticeFields }
  | { readonly type: 'RowDescription'; readonly fields: readonly FieldDescription[] }
  | { readonly type: 'DataRow'; readonly values: ReadonlyArray<Buffer | null> }
  | { readonly type: 'CommandComplete'; readonly tag: string }
  | {
      readonly type: 'CopyInResponse' | 'CopyOutResponse' | 'CopyBothResponse';
      readonly format: number;
      readonly columnFormats: readonly number[];
    }
  | { readonly type: 'CopyData'; readonly data: Buffer }
  | { readonly type: 'CopyDone' }
  | { readonly type: 'ParseComplete' }
  | { readonly type: 'BindComplete' }
  | { readonly type: 'CloseComplete' }
  | { readonly type: 'NoData' }
  | { readonly type: 'PortalSuspended' }
  | { readonly type: 'EmptyQueryResponse' }
  | { readonly type: 'ParameterDescription'; readonly typeOids: readonly number[] }
  | {
      readonly type: 'NotificationResponse';
      readonly processId: number;
      readonly channel: string;
      readonly payload: string;
    }
  | {
      readonly type: 'NegotiateProtocolVersion';
      readonly newestMinor: number;
      readonly unrecognized: readonly string[];
    }
  | { readonly type: 'FunctionCallResponse'; readonly value: Buffer | null };

/** Authentication request codes (the int32 after 'R'). */
export const AUTH = {
  Ok: 0,
  KerberosV5: 2,
  CleartextPassword: 3,
  MD5Password: 5,
  GSS: 7,
  GSSContinue: 8,
  SSPI: 9,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

/** Frontend type bytes. */
export const FRONTEND_CODES: Readonly<Record<FrontendMessage['type'], number>> = {
  Query: 0x51, // Q
  Parse: 0x50, // P
  Bind: 0x42, // B
  Describe: 0x44, // D
  Execute: 0x45, // E
  Close: 0x43, // C
  Sync: 0x53, // S
  Flush: 0x48, // H
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  Terminate: 0x58, // X
  PasswordMessage: 0x70, // p
  FunctionCall: 0x46, // F
};

/** Backend type bytes. */
export const BACKEND_CODES: Readonly<Record<BackendMessage['type'], number>> = {
  Authentication: 0x52, // R
  BackendKeyData: 0x4b, // K
  ParameterStatus: 0x53, // S
  ReadyForQuery: 0x5a, // Z
  ErrorResponse: 0x45, // E
  NoticeResponse: 0x4e, // N
  RowDescription: 0x54, // T
  DataRow: 0x44, // D
  CommandComplete: 0x43, // C
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  CopyBothResponse: 0x57, // W
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  ParseComplete: 0x31, // 1
  BindComplete: 0x32, // 2
  CloseComplete: 0x33, // 3
  NoData: 0x6e, // n
  PortalSuspended: 0x73, // s
  EmptyQueryResponse: 0x49, // I
  ParameterDescription: 0x74, // t
  NotificationResponse: 0x41, // A
  NegotiateProtocolVersion: 0x76, // v
  FunctionCallResponse: 0x56, // V
};

/** One framed message: its type byte (0 for startup-phase messages), its body, and its bytes on the wire. */
export interface Frame {
  readonly code: number;
  readonly body: Buffer;
  /** Header and body as received (a view into the input where possible). */
  readonly raw: Buffer;
}
