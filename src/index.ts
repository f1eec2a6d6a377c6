/**
 * The library entry (`import … from 'coatcheck'`): the client SDK that agents and
 * workflows use to reach a running gateway (also `coatcheck/sdk`), and the detection
 * engine, which is pure (no I/O: find, scrub or tokenize secrets in text). The gateway
 * itself runs as `coatcheck serve`; its internals are not a library interface.
 */

export {
  BUILTIN_RULES,
  createDetector,
  createFingerprinter,
  createKnownSecretMatcher,
  createLogScrubber,
  createScrubTransform,
  createStreamScanner,
  type Detector,
  type DetectorOptions,
  type Finding,
  KNOWN_SECRET_RULE_ID,
  type KnownSecretMatcher,
  maskFor,
  RULE_FAMILIES,
  type Rule,
  type ScrubOptions,
  scrubText,
  type TokenizeFn,
  tokenizeText,
} from './detect/index.js';
export * from './sdk/index.js';
