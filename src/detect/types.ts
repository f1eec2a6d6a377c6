/**
 * Types of the detection engine. Everything here is pure data: a finding names a rule,
 * a span and a fingerprint — never the matched value.
 */

export const RULE_FAMILIES = [
  'cloud',
  'vcs-ci',
  'ai',
  'saas',
  'payments',
  'private-key',
  'jwt',
  'database-uri',
  'http-auth',
  'generic',
  'pii',
  'known-secret',
] as const;
export type RuleFamily = (typeof RULE_FAMILIES)[number];

export type Confidence = 'high' | 'medium' | 'low';

/** Deterministic random source used to synthesise example secrets (see synth.ts). */
export interface Rng {
  /** An integer in [0, n). */
  int(n: number): number;
  /** `length` characters drawn from `alphabet`. */
  chars(alphabet: string, length: number): string;
}

/**
 * A synthetic positive for a rule. `value` is what would stand in a config or a response
 * (a token, or a whole connection string); `secret` is the part of `value` the rule must
 * report. `key` is a realistic field name to put in front of it (`aws_secret_access_key`);
 * `standalone` says the value is recognisable without that key.
 */
export interface RuleSample {
  readonly key: string;
  readonly value: string;
  readonly secret: string;
  readonly standalone: boolean;
}

export interface RuleExamples {
  /** Texts that must produce a finding of this rule whose span is exactly `secret`. */
  readonly positives: readonly { readonly text: string; readonly secret: string }[];
  /** Texts that must produce no finding of this rule. */
  readonly negatives: readonly string[];
}

export interface Rule {
  /** kebab-case, stable: it appears in masks (`[REDACTED:<id>]`), allowlists and SARIF. */
  readonly id: string;
  readonly family: RuleFamily;
  readonly title: string;
  /**
   * The pattern. The secret is capture group 1. Only bounded quantifiers (`{m,n}`) and no
   * nested repetition, so matching stays linear in the input (a test enforces this).
   */
  readonly pattern: RegExp;
  /**
   * Lower-case literal substrings. The rule runs only near an occurrence of one of them, and
   * a match counts only when it contains one. Empty: the rule runs over the whole text.
   */
  readonly keywords: readonly string[];
  /** Upper bound of the length of a whole match (window size and streaming overlap). */
  readonly maxLength: number;
  /**
   * Upper bound of the distance from the start of a match to the start of its keyword
   * (0 when the keyword is the token's prefix). Narrows the window scanned before a keyword;
   * absent means `maxLength`.
   */
  readonly maxKeywordOffset?: number;
  /**
   * false: a keyword only places the window and the match may follow it (up to `maxLength`
   * after it) without containing it; the pattern then checks the context itself with a
   * bounded lookbehind (a CSV row under its header). Default true.
   */
  readonly keywordInMatch?: boolean;
  readonly confidence: Confidence;
  /** Minimum Shannon entropy (bits per character) of the secret. */
  readonly minEntropy?: number;
  /** Checksum or structure check of the secret (CRC32, Luhn, mod-97, JWT header, ...). */
  readonly validate?: (secret: string) => boolean;
  /** Reject values shaped like hashes, UUIDs and identifiers (generic assignment rules). */
  readonly rejectHashLike?: boolean;
  /** Skip the placeholder check (the default is to run it). */
  readonly allowPlaceholders?: boolean;
  /** PII rules are off unless asked for. */
  readonly defaultEnabled: boolean;
  /** Where the format is documented. */
  readonly reference?: string;
  /** Builds a synthetic positive (used by the examples, the corpus and the bench). */
  readonly sample: (rng: Rng) => RuleSample;
  readonly examples: RuleExamples;
}

/** What the engine reports. Offsets are in the units of the input (see docs/detect.md). */
export interface Finding {
  readonly ruleId: string;
  readonly family: RuleFamily;
  /** Start of the secret (inclusive). */
  readonly start: number;
  /** End of the secret (exclusive). */
  readonly end: number;
  /** Hex: SHA-256 (or HMAC-SHA-256 with a fingerprint key) of the value, first 16 digits. */
  readonly fingerprint: string;
  readonly confidence: Confidence;
  /** Known-secret matches only: the id the secret was registered under. */
  readonly secretId?: string;
  /** Known-secret matches only: the form it was found in. */
  readonly encoding?: KnownSecretEncoding;
}

export type KnownSecretEncoding = 'raw' | 'base64' | 'base64url' | 'url' | 'json';

export interface Allowlist {
  /** Rule ids never reported. */
  readonly rules?: readonly string[];
  /** SHA-256 hex digests (full, 64 digits) of values never reported. */
  readonly valueHashes?: readonly string[];
  /** Values matching any of these are never reported. */
  readonly patterns?: readonly (RegExp | string)[];
}
