import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { pvegraphPlugins } from '../../src/api/yoga.js';
import { RevocationWatch } from '../../src/auth/revocation-watch.js';
import { loadConfig } from '../../src/config/config.js';
import { createFastPaths, PLUGINS_ACCOUNTED_FOR } from '../../src/fast-paths/index.js';
import { createErrorMasker } from '../../src/graphql/plugins/mask-errors.js';
import { Metrics } from '../../src/observability/metrics.js';
import type { Services } from '../../src/services.js';
import { metricValue, startTestServer } from '../support/test-server.js';

describe('fast paths', () => {
  it('account for every plugin of the Yoga chain (the prepared path runs none of them)', () => {
    const log = pino({ level: 'silent' });
    const masker = createErrorMasker(log);
    const revocations = new RevocationWatch({ verify: async () => null, intervalMs: 60_000 });
    try {
      const metrics = new Metrics();
      const fastPaths = createFastPaths({
        services: { metrics } as Services,
        log,
        masker,
        maxRequestBodyBytes: 1_000,
        wsMaxBufferedBytes: 1_000,
      });
      // Every optional plugin in: the chain at its longest.
      const chain = pvegraphPlugins({
        metrics,
        masker,
        introspection: false,
        maxSubscriptionsPerUser: 1,
        revocations,
        shutdown: new AbortController().signal,
        fastPaths: fastPaths.yogaPlugins,
      });
      const names = chain.map((p) => p.name);
      // A plugin added to src/api/yoga.ts must be accounted for in src/fast-paths/index.ts.
      expect(names.filter((name) => !(PLUGINS_ACCOUNTED_FOR as readonly string[]).includes(name))).toEqual([]);
      expect([...names].sort()).toEqual([...PLUGINS_ACCOUNTED_FOR].sort());
    } finally {
      revocations.stop();
    }
  });

  it('are on by default and switched off by PVEGRAPH_FAST_PATHS=false; any other word is refused', () => {
    expect(loadConfig({}).fastPaths).toBe(true);
    expect(loadConfig({ PVEGRAPH_FAST_PATHS: 'false' }).fastPaths).toBe(false);
    expect(loadConfig({ PVEGRAPH_FAST_PATHS: 'true' }).fastPaths).toBe(true);
    expect(() => loadConfig({ PVEGRAPH_FAST_PATHS: 'sometimes' })).toThrow(/PVEGRAPH_FAST_PATHS must be true or false/);
  });

  it.each([
    ['true', 1],
    ['false', 0],
  ])('PVEGRAPH_FAST_PATHS=%s: a repeated query is answered on the prepared path %i time(s)', async (flag, prepared) => {
    const server = await startTestServer({ env: { PVEGRAPH_FAST_PATHS: flag } });
    try {
      const { token } = await server.createUser();
      for (let i = 0; i < 2; i++) {
        const res = await fetch(server.graphqlUrl, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          body: JSON.stringify({ query: '{ me { id } }' }),
        });
        expect(res.status).toBe(200);
      }
      // The series exists only where the fast path does (Number.NaN: absent).
      const answered = await metricValue(server, 'pvegraph_graphql_prepared_requests_total{path="prepared"}');
      expect(Number.isNaN(answered) ? 0 : answered).toBe(prepared);
    } finally {
      await server.stop();
    }
  });
});
