/**
 * Detection engine: finds secrets and personal data in text, pure (no I/O). Front-ends call
 * it; the vault supplies known secrets and the tokenize callback. See docs/detect.md.
 */

export {
  type DetectCommandDeps,
  registerDetectCommands,
  runScan,
  runScrub,
  runTokenize,
  SCAN_EXIT,
  type TokenizeOrigin,
} from './cli.js';
export { createDetector, type Detector, type DetectorOptions, KNOWN_SECRET_RULE_ID } from './detector.js';
export { createFingerprinter, FINGERPRINT_HEX_LENGTH, valueHash } from './fingerprint.js';
export {
  createKnownSecretMatcher,
  KNOWN_SECRET_MAX_BYTES,
  KNOWN_SECRET_MIN_BYTES,
  type KnownSecretMatch,
  type KnownSecretMatcher,
} from './known-secrets.js';
export { BUILTIN_RULES } from './rules/index.js';
export {
  createLogScrubber,
  createScrubTransform,
  maskFor,
  type ScrubOptions,
  type ScrubTransformOptions,
  scrubText,
  type TokenizeFn,
  tokenizeText,
} from './scrub.js';
export { createStreamScanner, type StreamScanner, type StreamScannerOptions } from './stream-scanner.js';
export {
  type Allowlist,
  type Confidence,
  type Finding,
  type KnownSecretEncoding,
  RULE_FAMILIES,
  type Rule,
  type RuleFamily,
} from './types.js';
