import { CoatcheckError } from '../core/errors.js';

export const MAX_CONFIG_BYTES = 1024 * 1024;

/** CC_ERR_CONFIG_INVALID naming the file (or variable), the line and the field. */
export function configError(
  file: string,
  line: number | null,
  field: string,
  problem: string,
): CoatcheckError {
  const where = line === null ? file : `${file}:${line}`;
  return new CoatcheckError(
    'CC_ERR_CONFIG_INVALID',
    `${where}: ${field === '' ? '' : `${field}: `}${problem}`,
    {
      details: { file, line, field },
    },
  );
}
