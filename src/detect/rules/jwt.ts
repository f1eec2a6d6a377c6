import { B64URL } from '../synth.js';
import type { Rng, Rule, RuleSample } from '../types.js';
import { jwtHeaderValid } from '../validators.js';
import { custom, samplePositives } from './builders.js';

function b64url(text: string): string {
  return Buffer.from(text).toString('base64url');
}

export function syntheticJwt(rng: Rng): string {
  const header = b64url('{"alg":"HS256","typ":"JWT"}');
  const payload = b64url(
    `{"sub":"${rng.chars('0123456789', 10)}","name":"svc-${rng.chars('abcdefghijklmnop', 6)}","iat":1700000000}`,
  );
  return `${header}.${payload}.${rng.chars(B64URL, 43)}`;
}

const sample = (rng: Rng): RuleSample => {
  const v = syntheticJwt(rng);
  return { key: 'id_token', value: v, secret: v, standalone: true };
};

export const JWT_RULES: readonly Rule[] = [
  custom({
    id: 'jwt',
    family: 'jwt',
    title: 'JSON Web Token (signed, JWS compact form)',
    pattern:
      /(?<![A-Za-z0-9_\-.])(eyJ[A-Za-z0-9_-]{10,2000}\.eyJ[A-Za-z0-9_-]{2,8000}\.[A-Za-z0-9_-]{16,1400})(?![A-Za-z0-9_\-.])/,
    keywords: ['eyj'],
    maxLength: 11500,
    validate: jwtHeaderValid,
    confidence: 'high',
    sample,
    positives: samplePositives('jwt', sample, (v) => `Authorization: Bearer ${v}`),
    negatives: [
      // Header that is not JSON with an alg.
      `${b64url('{"foo":"bar","x":1}')}.${b64url('{"sub":"1"}')}.abcdefghijklmnopqrstuv`.replace(
        /^eyJ/,
        'eyJ',
      ),
      'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0',
    ],
    reference: 'https://www.rfc-editor.org/rfc/rfc7519',
  }),
];
