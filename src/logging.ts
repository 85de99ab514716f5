import pino, { type Logger } from 'pino';
import type { LogLevel } from './config/config.js';

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
    },
    destination,
  );
}

export type { Logger };
