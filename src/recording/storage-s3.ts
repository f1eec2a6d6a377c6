import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { CoatcheckError } from '../core/errors.js';
import { checkLocation, type RecordingStorage } from './storage.js';

/** `recording.storage` when `kind: s3` (docs/recording.md, ADR 0024). */
export interface S3StorageSettings {
  readonly endpoint?: string | undefined;
  readonly bucket: string;
  readonly region: string;
  /** Key prefix: empty, or path segments each ending in `/`. */
  readonly prefix: string;
  readonly forcePathStyle: boolean;
  readonly timeoutMs: number;
}

export interface S3AccessKey {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string | undefined;
}

/** The location of a recording in the object store: `s3:<session id>.ccr` (its key is `prefix + <session id>.ccr`). */
const SCHEME = 's3:';
/** Credentials are read again after this long (a rotated vault secret is picked up). */
const CREDENTIALS_TTL_MS = 5 * 60_000;

function storageError(operation: string, error: unknown): CoatcheckError {
  // The SDK's error names the S3 error code and the HTTP status; neither carries a credential.
  const e = error as { name?: unknown; $metadata?: { httpStatusCode?: unknown } };
  const name = typeof e?.name === 'string' ? e.name.slice(0, 64).replace(/[^A-Za-z0-9_.-]/g, '') : 'Error';
  const status =
    typeof e?.$metadata?.httpStatusCode === 'number' ? ` (HTTP ${e.$metadata.httpStatusCode})` : '';
  return new CoatcheckError(
    'CC_ERR_RECORDING_STORAGE',
    `the recording object store refused or failed ${operation}: ${name}${status}`,
    { details: { operation } },
  );
}

function isMissing(error: unknown): boolean {
  const e = error as { name?: unknown; $metadata?: { httpStatusCode?: unknown } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}

/**
 * Sealed recordings in an S3-compatible object store: one object per recording, written
 * once (`If-None-Match: *`, so a store that honours conditional writes never overwrites),
 * read with its size bounded before and while it is read, deleted on erasure.
 * `@aws-sdk/client-s3` is loaded on the first call, so commands that never touch a
 * recording do not pay for it. `accessKey` is asked for when the client is made and again
 * every five minutes; it is never logged.
 */
export function s3RecordingStorage(
  settings: S3StorageSettings,
  accessKey: () => Promise<S3AccessKey>,
): RecordingStorage {
  let client: Promise<{ s3: S3Client; sdk: typeof import('@aws-sdk/client-s3') }> | null = null;
  const connect = () => {
    client ??= import('@aws-sdk/client-s3').then((sdk) => ({
      sdk,
      s3: new sdk.S3Client({
        region: settings.region,
        ...(settings.endpoint === undefined ? {} : { endpoint: settings.endpoint }),
        forcePathStyle: settings.forcePathStyle,
        maxAttempts: 3,
        credentials: async () => {
          const key = await accessKey();
          return {
            accessKeyId: key.accessKeyId,
            secretAccessKey: key.secretAccessKey,
            ...(key.sessionToken === undefined ? {} : { sessionToken: key.sessionToken }),
            expiration: new Date(Date.now() + CREDENTIALS_TTL_MS),
          };
        },
      }),
    }));
    // A failed load (the package missing) is not cached: the next call tries again.
    client.catch(() => {
      client = null;
    });
    return client;
  };
  const keyOf = (location: string): string => {
    if (!location.startsWith(SCHEME)) {
      throw new CoatcheckError(
        'CC_ERR_RECORDING_UNREADABLE',
        'a recording location is not an object store location',
      );
    }
    const name = location.slice(SCHEME.length);
    checkLocation(name);
    return `${settings.prefix}${name}`;
  };
  const deadline = () => AbortSignal.timeout(settings.timeoutMs);

  return {
    kind: 's3',
    locate(sessionId) {
      const location = `${SCHEME}${sessionId}.ccr`;
      keyOf(location);
      return location;
    },
    async put(location, data) {
      const Key = keyOf(location);
      const { s3, sdk } = await connect();
      try {
        await s3.send(
          new sdk.PutObjectCommand({
            Bucket: settings.bucket,
            Key,
            Body: data,
            ContentLength: data.length,
            ContentType: 'application/octet-stream',
            IfNoneMatch: '*',
          }),
          { abortSignal: deadline() },
        );
      } catch (error) {
        throw storageError('a write', error);
      }
    },
    async get(location, maxBytes) {
      const Key = keyOf(location);
      const { s3, sdk } = await connect();
      let body: Readable | undefined;
      try {
        const out = await s3.send(new sdk.GetObjectCommand({ Bucket: settings.bucket, Key }), {
          abortSignal: deadline(),
        });
        body = out.Body as Readable | undefined;
        if (body === undefined) return Buffer.alloc(0);
        if ((out.ContentLength ?? 0) > maxBytes) throw tooLarge(location);
        const parts: Buffer[] = [];
        let total = 0;
        for await (const part of body) {
          total += (part as Buffer).length;
          // The length header may be missing or wrong: bound what is read, not what is claimed.
          if (total > maxBytes) throw tooLarge(location);
          parts.push(part as Buffer);
        }
        return Buffer.concat(parts, total);
      } catch (error) {
        if (error instanceof CoatcheckError) throw error;
        if (isMissing(error)) return null;
        throw storageError('a read', error);
      } finally {
        body?.destroy();
      }
    },
    async delete(location) {
      const Key = keyOf(location);
      const { s3, sdk } = await connect();
      try {
        await s3.send(new sdk.DeleteObjectCommand({ Bucket: settings.bucket, Key }), {
          abortSignal: deadline(),
        });
      } catch (error) {
        if (!isMissing(error)) throw storageError('a delete', error);
      }
    },
  };
}

function tooLarge(location: string): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_RECORDING_UNREADABLE',
    `recording object ${location} is larger than allowed`,
  );
}

/**
 * The access key held in a vault secret: JSON {"accessKeyId","secretAccessKey"[,"sessionToken"]}.
 * Errors name the secret, never its value.
 */
export function parseAccessKey(secretName: string, value: Buffer): S3AccessKey {
  const bad = () =>
    new CoatcheckError(
      'CC_ERR_RECORDING_STORAGE',
      `vault secret ${secretName} must hold {"accessKeyId": …, "secretAccessKey": …} as JSON for recording.storage`,
      { details: { operation: 'credentials' } },
    );
  let parsed: unknown;
  try {
    parsed = JSON.parse(value.toString('utf8'));
  } catch {
    throw bad();
  }
  const p = parsed as Record<string, unknown>;
  const text = (v: unknown) => typeof v === 'string' && v.length > 0 && v.length <= 4096;
  if (typeof p !== 'object' || p === null || !text(p.accessKeyId) || !text(p.secretAccessKey)) throw bad();
  if (p.sessionToken !== undefined && !text(p.sessionToken)) throw bad();
  return {
    accessKeyId: p.accessKeyId as string,
    secretAccessKey: p.secretAccessKey as string,
    sessionToken: p.sessionToken as string | undefined,
  };
}

/** The access key from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN). */
export function accessKeyFromEnv(env: NodeJS.ProcessEnv): S3AccessKey {
  const id = env.AWS_ACCESS_KEY_ID;
  const secret = env.AWS_SECRET_ACCESS_KEY;
  if (!id || !secret) {
    throw new CoatcheckError(
      'CC_ERR_RECORDING_STORAGE',
      'recording.storage.credentials is env, and AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY is not set',
      { details: { operation: 'credentials' } },
    );
  }
  return { accessKeyId: id, secretAccessKey: secret, sessionToken: env.AWS_SESSION_TOKEN || undefined };
}
