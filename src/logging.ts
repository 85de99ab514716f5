import pino, { type Logger } from 'pino';
import type { LogLevel } from './config/config.js';
import { currentRequestId } from './observability/request-context.js';

/**
 * Paths pino blanks out wherever they appear in a logged object: tokens, node secrets and
 * whatever a GraphQL input carries under those names.
 */
export const REDACT_PATHS = [
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
  'connectionParams',
  'tokenSecret',
  '*.tokenSecret',
  '*.*.tokenSecret',
  'sshPassword',
  '*.sshPassword',
  '*.*.sshPassword',
  'token',
  '*.token',
  'variables',
  '*.variables',
];

export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { service: 'pvegraph' },
      // Every line written while serving a request names it (see request-context.ts).
      mixin: () => {
        const requestId = currentRequestId();
        return requestId ? { requestId } : {};
      },
    },
    destination,
  );
}

export type { Logger };
