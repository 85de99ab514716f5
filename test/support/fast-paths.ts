import { loadConfig } from '../../src/config/config.js';

/**
 * Whether the servers of this run have their fast paths on (PVEGRAPH_FAST_PATHS, read as the
 * server reads it). CI runs the HTTP/WebSocket/GraphQL suites a second time with them off;
 * tests of a fast path itself are skipped then, with this as the reason.
 */
export const fastPathsOn = loadConfig({ PVEGRAPH_FAST_PATHS: process.env.PVEGRAPH_FAST_PATHS }).fastPaths;
export const FAST_PATHS_OFF = 'PVEGRAPH_FAST_PATHS=false: this tests a fast path itself';
