/**
 * Base64 attachments in LLM API requests (images, files, audio). They cannot be rewritten
 * (a ticket inside a PNG is no use to anyone), so they are decoded and scanned, and a
 * request whose attachment holds a secret is refused.
 *
 * Recognised:
 *  - data URLs anywhere (`data:image/png;base64,…`: OpenAI `image_url.url`, `file_data`,
 *    Responses `input_image.image_url`);
 *  - Anthropic `source: { type: 'base64', data }` (images and documents);
 *  - OpenAI `input_audio.data`, `file.file_data`, and any other long string that is
 *    entirely base64 (≥ 256 characters), so an unknown field is not a way around the scan.
 */
import type { StringSite } from '../../gateway/found-secrets.js';

/** Strings this long that are entirely base64 are decoded and scanned. */
export const MIN_BARE_BASE64 = 256;

const DATA_URL_RE = /^data:[^,;]{0,128}(?:;[^,;]{0,128}){0,8};base64,/i;
const BASE64_RE = /^[A-Za-z0-9+/_-]+={0,2}$/;

/** The decoded bytes if `text` at `site` is a base64 attachment; null otherwise. */
export function attachmentBytes(text: string, site: StringSite): Buffer | null {
  const dataUrl = DATA_URL_RE.exec(text);
  if (dataUrl !== null) return decode(text.slice(dataUrl[0].length));
  const parent = site.parent;
  const inBase64Source =
    parent !== null &&
    !Array.isArray(parent) &&
    site.key === 'data' &&
    (parent.type === 'base64' || parent.format !== undefined);
  const compact = text.length >= 16 && !/\s/.test(text.slice(0, 64)) ? text.replace(/[\r\n]/g, '') : null;
  if (compact === null) return null;
  if ((inBase64Source || compact.length >= MIN_BARE_BASE64) && BASE64_RE.test(compact))
    return decode(compact);
  return null;
}

function decode(payload: string): Buffer {
  const clean = payload.replace(/[\r\n\s]/g, '');
  return Buffer.from(clean, /[-_]/.test(clean) ? 'base64url' : 'base64');
}
