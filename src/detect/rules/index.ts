import type { Rule } from '../types.js';
import { AI_RULES } from './ai.js';
import { CLOUD_RULES } from './cloud.js';
import { DATABASE_URI_RULES } from './database-uri.js';
import { ENCODED_DATABASE_URI_RULES, ENCODED_URL_AUTH_RULES } from './encoded-uri.js';
import { GENERIC_RULES } from './generic.js';
import { HTTP_AUTH_RULES } from './http-auth.js';
import { JWT_RULES } from './jwt.js';
import { PAYMENTS_RULES } from './payments.js';
import { PII_RULES } from './pii.js';
import { PRIVATE_KEY_RULES } from './private-key.js';
import { SAAS_RULES } from './saas.js';
import { VCS_CI_RULES } from './vcs-ci.js';

/** Every built-in rule, in documentation order. PII rules are off by default. */
export const BUILTIN_RULES: readonly Rule[] = [
  ...CLOUD_RULES,
  ...VCS_CI_RULES,
  ...AI_RULES,
  ...SAAS_RULES,
  ...PAYMENTS_RULES,
  ...PRIVATE_KEY_RULES,
  ...JWT_RULES,
  ...DATABASE_URI_RULES,
  ...ENCODED_DATABASE_URI_RULES,
  ...HTTP_AUTH_RULES,
  ...ENCODED_URL_AUTH_RULES,
  ...GENERIC_RULES,
  ...PII_RULES,
];
