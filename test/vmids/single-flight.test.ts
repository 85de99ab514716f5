import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { expectCode } from '../proxmox/helpers.js';
import { uniqueRedisPrefix } from '../support/test-server.js';
import { makeService, newNode, type OpenStore, openStore, type Proxmox, startProxmox } from './helpers.js';

describe('a cache miss asks Proxmox once, however many requests miss at once', () => {
  let proxmox: Proxmox;
  const opened: OpenStore[] = [];

  beforeAll(async () => {
    proxmox = await startProxmox({ guests: 50, vmidGapEvery: 7 });
  });
  afterAll(async () => {
    await proxmox.close();
  });
  beforeEach(() => {
    proxmox.sim.stats.reset();
    proxmox.sim.clearFaults();
    // Slow enough that every request below arrives while the first fill is still running.
    proxmox.sim.addFault({ kind: 'latency', ms: 300, pathPrefix: '/cluster/resources' });
  });
  afterEach(async () => {
    for (const o of opened.splice(0)) await o.close();
  });

  it.each(['memory', 'redis'] as const)('20 concurrent misses on one instance (%s store)', async (kind) => {
    const o = await openStore(kind, uniqueRedisPrefix());
    opened.push(o);
    const service = makeService(o.store, proxmox);
    const node = newNode();
    const results = await Promise.all([
      ...Array.from({ length: 17 }, () => service.getCachedVmids(node)),
      service.isVmidTaken(node, 100),
      service.nextFreeVmid(node),
      service.reserveVmid(node, undefined, 60),
    ]);
    expect(proxmox.resourceCalls()).toBe(1);
    const sets = results.slice(0, 17) as Awaited<ReturnType<typeof service.getCachedVmids>>[];
    for (const s of sets) expect(s.taken).toEqual(proxmox.sim.guests().map((g) => g.vmid));
    expect(sets.every((s) => !s.fromCache)).toBe(true);
  });

  it('20 concurrent misses spread over two instances (separate Redis connections)', async () => {
    const prefix = uniqueRedisPrefix();
    const a = await openStore('redis', prefix);
    const b = await openStore('redis', prefix);
    opened.push(a, b);
    const services = [makeService(a.store, proxmox), makeService(b.store, proxmox)];
    const node = newNode();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => services[i % 2]!.getCachedVmids(node)));
    expect(proxmox.resourceCalls()).toBe(1);
    const expected = proxmox.sim.guests().map((g) => g.vmid);
    for (const s of results) expect(s.taken).toEqual(expected);
    expect(new Set(results.map((s) => s.version))).toEqual(new Set([1]));
  });

  it('when the filling instance fails, the waiting one tries itself and reports the Proxmox error', async () => {
    const prefix = uniqueRedisPrefix();
    const a = await openStore('redis', prefix);
    const b = await openStore('redis', prefix);
    opened.push(a, b);
    proxmox.sim.clearFaults();
    proxmox.sim.addFault({ kind: 'latency', ms: 200, pathPrefix: '/cluster/resources' });
    proxmox.sim.addFault({
      kind: 'status',
      status: 403,
      reason: 'Permission check failed',
      pathPrefix: '/cluster/resources',
    });
    const node = newNode();
    const [ra, rb] = await Promise.allSettled([
      makeService(a.store, proxmox).getCachedVmids(node),
      makeService(b.store, proxmox).getCachedVmids(node),
    ]);
    for (const r of [ra, rb]) {
      expect(r.status).toBe('rejected');
      await expectCode(Promise.reject((r as PromiseRejectedResult).reason), 'PROXMOX_FORBIDDEN');
    }
    expect(proxmox.resourceCalls()).toBe(2);
  });
});
