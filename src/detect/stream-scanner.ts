import { CoatcheckError } from '../core/errors.js';
import { createDetector, type Detector, type DetectorOptions } from './detector.js';
import type { Finding } from './types.js';

export interface StreamScannerOptions extends DetectorOptions {
  /** A detector to reuse (its options win over the ones given here). */
  readonly detector?: Detector;
  /** Called with the findings of each write/end, in order. */
  readonly onFinding?: (finding: Finding) => void;
}

export interface StreamScanner {
  /**
   * Adds a chunk. Strings are encoded as UTF-8: offsets are bytes from the start of the stream.
   * Returns the findings that became certain with this chunk (possibly none).
   */
  write(chunk: Buffer | string): Finding[];
  /** Ends the stream and returns the remaining findings. */
  end(): Finding[];
  /** Bytes written so far. */
  readonly offset: number;
  /** Bytes currently held (bounded by about 3 x overlap + the largest chunk). */
  readonly buffered: number;
}

/** Extra context kept before the region a scan may report, for lookbehinds and key prefixes. */
const SLACK = 64;

/**
 * Scans a stream chunk by chunk with bounded memory. It keeps an overlap of the longest
 * possible match (about 11.5 KiB for the built-in rules; longer when a known secret's encoded
 * form is longer), so secrets straddling chunk boundaries are found, and each finding is
 * reported exactly once, as soon as no later byte can change it.
 */
export function createStreamScanner(options: StreamScannerOptions = {}): StreamScanner {
  const detector = options.detector ?? createDetector(options);
  const known = options.knownSecrets;
  const overlapNow = (): number => Math.max(detector.maxMatchLength, known?.maxPatternLength ?? 0) + SLACK;

  let buf = Buffer.alloc(0);
  let base = 0; // stream offset of buf[0]
  let emitFrom = 0; // findings starting before this were reported already
  let lastEnd = 0; // end of the last reported finding
  let ended = false;

  function emit(findings: Finding[], cutoff: number): Finding[] {
    const out: Finding[] = [];
    for (const f of findings) {
      const start = f.start + base;
      if (start < emitFrom || start >= cutoff || start < lastEnd) continue;
      const shifted: Finding = { ...f, start, end: f.end + base };
      out.push(shifted);
      lastEnd = shifted.end;
      options.onFinding?.(shifted);
    }
    return out;
  }

  function process(final: boolean): Finding[] {
    const overlap = overlapNow();
    const end = base + buf.length;
    const cutoff = final ? end : end - overlap;
    if (!final && cutoff - emitFrom < overlap) return [];
    const out = emit(detector.scan(buf), cutoff);
    emitFrom = cutoff;
    // Keep what a later match may need: `overlap` bytes before the cutoff (a match reported
    // later starts at or after the cutoff, its key prefix and lookbehind sit before it).
    const keepFrom = Math.max(base, cutoff - overlap);
    buf = buf.subarray(keepFrom - base);
    base = keepFrom;
    return out;
  }

  return {
    write(chunk) {
      if (ended) {
        throw new CoatcheckError('CC_ERR_DETECT_STREAM_ENDED', 'write after end on a stream scanner');
      }
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
      if (bytes.length === 0) return [];
      buf = buf.length === 0 ? Buffer.from(bytes) : Buffer.concat([buf, bytes]);
      return process(false);
    },
    end() {
      if (ended) return [];
      ended = true;
      const out = process(true);
      base += buf.length;
      buf = Buffer.alloc(0);
      return out;
    },
    get offset() {
      return base + buf.length;
    },
    get buffered() {
      return buf.length;
    },
  };
}
