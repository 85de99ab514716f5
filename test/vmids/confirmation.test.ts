import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateNode } from '../nodes/documents.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { subscribeWs } from '../support/subscriptions.js';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { IsVmidTaken, NextFreeVmid, ReleaseVmid, ReserveVmid, VmidEvents, VmidsTaken } from './documents.js';

const code = (res: { errors?: Array<{ extensions?: Record<string, unknown> }> }) =>
  res.errors?.[0]?.extensions?.code as string | undefined;

/** reserveVmid asks Proxmox before it answers, and stays inside the datacenter's next-id range. */
describe('reservations confirmed with Proxmox', () => {
  let server: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;

  beforeAll(async () => {
    [server, sim] = await Promise.all([startTestServer(), startTestSimulator({ guests: 5 })]); // guests 100…104
    token = (await server.createUser()).token;
    nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  it('never answers a VMID Proxmox has in use, even when the cache does not know it yet; the cache and subscribers learn it', async () => {
    const cached = (await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken;
    expect(cached.taken).toEqual([100, 101, 102, 103, 104]);
    const sub = subscribeWs<{ kind: string; vmids: number[] | null }>(server, token, VmidEvents, { nodeId });
    const events = sub.events;
    try {
      await expect.poll(() => events.length).toBe(1);
      // Created in the Proxmox GUI (or by Terraform) a moment ago: the cached set lacks them.
      sim.addGuest({ vmid: 105 });
      sim.addGuest({ vmid: 106 });
      const r = (await server.gql(ReserveVmid, { nodeId, ttlSeconds: 60 }, token)).data!.reserveVmid;
      expect(r.vmid).toBe(107);
      const now = (await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken;
      expect(now.taken).toEqual(expect.arrayContaining([105, 106]));
      expect(now.reserved).toEqual([107]);
      await expect.poll(() => events.some((e) => e.kind === 'REFRESHED' && e.vmids?.includes(106))).toBe(true);
      // Asked for by number: CONFLICT, and it is taken from now on.
      sim.addGuest({ vmid: 120 });
      const asked = await server.gql(ReserveVmid, { nodeId, vmid: 120 }, token);
      expect(code(asked)).toBe('CONFLICT');
      expect((await server.gql(IsVmidTaken, { nodeId, vmid: 120 }, token)).data!.isVmidTaken).toBe(true);
      await server.gql(ReleaseVmid, { nodeId, vmid: 107 }, token);
    } finally {
      await sub.close();
      for (const v of [105, 106, 120]) sim.removeGuest(v);
    }
  });

  it('concurrent reservations that meet guests the cache does not know yet each get a free VMID, once', async () => {
    // A cluster of its own: no VMID of it is held from an earlier test (reuse hold).
    const own = await startTestSimulator({ guests: 5 }); // guests 100…104
    try {
      const id = (await server.gql(CreateNode, { input: nodeInputFor(own) as never }, token)).data!.createNode.id;
      expect((await server.gql(VmidsTaken, { nodeId: id }, token)).data!.vmidsTaken.taken).toEqual([
        100, 101, 102, 103, 104,
      ]);
      // Created behind pvegraph's back, among the VMIDs the cache holds free.
      const behind = [105, 107, 108, 111];
      for (const v of behind) own.addGuest({ vmid: v });
      const answers = await Promise.all(
        Array.from({ length: 12 }, () => server.gql(ReserveVmid, { nodeId: id, ttlSeconds: 60 }, token)),
      );
      expect(answers.map((a) => a.errors)).toEqual(Array(12).fill(undefined));
      const got = answers.map((a) => a.data!.reserveVmid.vmid).sort((a, b) => a - b);
      // The twelve lowest VMIDs that are free in Proxmox, none of them twice.
      const free = Array.from({ length: 30 }, (_, i) => 105 + i).filter((v) => !behind.includes(v));
      expect(got).toEqual(free.slice(0, 12));
      const now = (await server.gql(VmidsTaken, { nodeId: id }, token)).data!.vmidsTaken;
      expect(now.taken).toEqual(expect.arrayContaining(behind));
      expect(now.reserved).toEqual(got);
    } finally {
      await own.stop();
    }
  });

  it("answers Proxmox's error when it cannot be asked, and leaves nothing reserved", async () => {
    await server.gql(VmidsTaken, { nodeId }, token);
    sim.addFault({ kind: 'status', status: 500, reason: 'pveproxy down', pathPrefix: '/cluster/nextid', times: 10 });
    try {
      const res = await server.gql(ReserveVmid, { nodeId, vmid: 4444, ttlSeconds: 60 }, token);
      expect(code(res)).toMatch(/^PROXMOX_/);
      expect(res.data).toBeNull();
    } finally {
      sim.clearFaults();
    }
    expect((await server.gql(IsVmidTaken, { nodeId, vmid: 4444 }, token)).data!.isVmidTaken).toBe(false);
  });

  it("stays inside the datacenter's next-id range without a vmid; an explicit vmid may lie outside it", async () => {
    const ranged = await startTestSimulator({ guests: 2, nextId: { lower: 5000, upper: 5003 } });
    try {
      const id = (await server.gql(CreateNode, { input: nodeInputFor(ranged) as never }, token)).data!.createNode.id;
      expect((await server.gql(NextFreeVmid, { nodeId: id }, token)).data!.nextFreeVmid).toBe(5000);
      const got: number[] = [];
      for (let i = 0; i < 3; i++)
        got.push((await server.gql(ReserveVmid, { nodeId: id, ttlSeconds: 60 }, token)).data!.reserveVmid.vmid);
      expect(got).toEqual([5000, 5001, 5002]);
      const full = await server.gql(ReserveVmid, { nodeId: id, ttlSeconds: 60 }, token);
      expect(code(full)).toBe('CONFLICT');
      expect(
        (await server.gql(ReserveVmid, { nodeId: id, vmid: 150, ttlSeconds: 60 }, token)).data!.reserveVmid.vmid,
      ).toBe(150);
    } finally {
      await ranged.stop();
    }
  });
});
