import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { graphql } from '../gql/index.js';
import { DeleteNode, RegisterContainer, UnregisterContainer } from '../nodes/documents.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { subscribeWs } from '../support/subscriptions.js';
import { startTestServer, type TestServer, uniqueRedisPrefix } from '../support/test-server.js';
import {
  InvalidateVmidCache,
  IsVmidTaken,
  NextFreeVmid,
  ReleaseVmid,
  ReserveVmid,
  VmidEvents,
  VmidsTaken,
} from '../vmids/documents.js';

const CreateClusterNode = graphql(`
  mutation CreateClusterNode($input: CreateNodeInput!) {
    createNode(input: $input) {
      id
      clusterId
      clusterIdentified
      clusterName
    }
  }
`);

const code = (res: { errors?: Array<{ extensions?: Record<string, unknown> }> }) => res.errors?.[0]?.extensions?.code;

/**
 * One VMID space per Proxmox cluster, through GraphQL on two instances of one deployment:
 * alice on instance A and bob on instance B register the same cluster; a twin cluster (same
 * cluster and node names, other installations) stays apart.
 */
describe('one VMID space per Proxmox cluster', () => {
  let a: TestServer;
  let b: TestServer;
  let sim: Simulator;
  let twin: Simulator;
  let alice: string;
  let bob: string;
  let aliceNode: { id: string; clusterId: string };
  let bobNode: { id: string; clusterId: string };

  const create = async (server: TestServer, of: Simulator, token: string) => {
    const res = await server.gql(CreateClusterNode, { input: nodeInputFor(of) as never }, token);
    expect(res.errors).toBeUndefined();
    return res.data!.createNode;
  };

  beforeAll(async () => {
    const prefix = uniqueRedisPrefix();
    a = await startTestServer({ redisKeyPrefix: prefix });
    [b, sim, twin] = await Promise.all([
      startTestServer({ databaseUrl: a.databaseUrl, redisKeyPrefix: prefix }),
      startTestSimulator({ guests: 6, clusterName: 'cluster', nodeNames: ['pve1', 'pve2', 'pve3'] }),
      startTestSimulator({ guests: 6, clusterName: 'cluster', nodeNames: ['pve1', 'pve2', 'pve3'] }),
    ]);
    alice = (await a.createUser()).token;
    bob = (await a.createUser()).token;
    aliceNode = await create(a, sim, alice);
    bobNode = await create(b, sim, bob);
  });
  afterAll(async () => {
    await Promise.all([a.stop(), b.stop(), sim.stop(), twin.stop()]);
  });

  it('gives every registration of one cluster, of any user, the same clusterId; a twin with equal names gets its own', async () => {
    expect(aliceNode.clusterId).toMatch(/^pve-[0-9a-f]{32}$/);
    expect(bobNode.clusterId).toBe(aliceNode.clusterId);
    const twinNode = await create(a, twin, alice);
    expect(twinNode).toMatchObject({ clusterName: 'cluster', clusterIdentified: true });
    expect(twinNode.clusterId).not.toBe(aliceNode.clusterId);
  });

  it("shares reservations: another user's shows as reserved, cannot be taken or released by them, and only its owner ends it", async () => {
    const held = (await a.gql(ReserveVmid, { nodeId: aliceNode.id, ttlSeconds: 120 }, alice)).data!.reserveVmid;
    expect(held.nodeId).toBe(aliceNode.id);
    const seenByBob = (await b.gql(VmidsTaken, { nodeId: bobNode.id }, bob)).data!.vmidsTaken;
    expect(seenByBob.reserved).toContain(held.vmid);
    expect((await b.gql(IsVmidTaken, { nodeId: bobNode.id, vmid: held.vmid }, bob)).data!.isVmidTaken).toBe(true);
    expect(code(await b.gql(ReserveVmid, { nodeId: bobNode.id, vmid: held.vmid }, bob))).toBe('CONFLICT');
    const bobs = (await b.gql(ReserveVmid, { nodeId: bobNode.id }, bob)).data!.reserveVmid;
    expect(bobs.vmid).not.toBe(held.vmid);
    expect((await b.gql(NextFreeVmid, { nodeId: bobNode.id, min: held.vmid }, bob)).data!.nextFreeVmid).not.toBe(
      held.vmid,
    );

    // Bob cannot end Alice's reservation; it answers as if there were none.
    expect((await b.gql(ReleaseVmid, { nodeId: bobNode.id, vmid: held.vmid }, bob)).data!.releaseVmid).toBe(false);
    expect((await a.gql(IsVmidTaken, { nodeId: aliceNode.id, vmid: held.vmid }, alice)).data!.isVmidTaken).toBe(true);
    expect((await a.gql(ReleaseVmid, { nodeId: aliceNode.id, vmid: held.vmid }, alice)).data!.releaseVmid).toBe(true);
    expect((await b.gql(IsVmidTaken, { nodeId: bobNode.id, vmid: held.vmid }, bob)).data!.isVmidTaken).toBe(false);
    expect((await b.gql(ReleaseVmid, { nodeId: bobNode.id, vmid: bobs.vmid }, bob)).data!.releaseVmid).toBe(true);

    // Both see one version of one space.
    const [va, vb] = await Promise.all([
      a.gql(VmidsTaken, { nodeId: aliceNode.id }, alice),
      b.gql(VmidsTaken, { nodeId: bobNode.id }, bob),
    ]);
    expect(va.data!.vmidsTaken.version).toBe(vb.data!.vmidsTaken.version);
  });

  it('keeps a twin cluster apart: what one reserves is free in the other', async () => {
    const twinNode = await create(a, twin, bob);
    const held = (await a.gql(ReserveVmid, { nodeId: aliceNode.id, vmid: 4321, ttlSeconds: 60 }, alice)).data!
      .reserveVmid;
    const there = await a.gql(ReserveVmid, { nodeId: twinNode.id, vmid: held.vmid, ttlSeconds: 60 }, bob);
    expect(there.errors).toBeUndefined();
    expect(there.data!.reserveVmid.vmid).toBe(4321);
    await a.gql(ReleaseVmid, { nodeId: aliceNode.id, vmid: 4321 }, alice);
    await a.gql(ReleaseVmid, { nodeId: twinNode.id, vmid: 4321 }, bob);
  });

  it('refuses to register a container for a VMID another user holds a reservation of (it would end theirs)', async () => {
    const held = (await a.gql(ReserveVmid, { nodeId: aliceNode.id, vmid: 5400, ttlSeconds: 60 }, alice)).data!
      .reserveVmid;
    expect(code(await b.gql(RegisterContainer, { input: { nodeId: bobNode.id, vmid: held.vmid } }, bob))).toBe(
      'CONFLICT',
    );
    expect((await a.gql(VmidsTaken, { nodeId: aliceNode.id }, alice)).data!.vmidsTaken.reserved).toContain(held.vmid);
    // Its holder registers it: the reservation is used up, the VMID stays taken.
    const ct = (await a.gql(RegisterContainer, { input: { nodeId: aliceNode.id, vmid: held.vmid } }, alice)).data!
      .registerContainer;
    const set = (await b.gql(VmidsTaken, { nodeId: bobNode.id }, bob)).data!.vmidsTaken;
    expect(set.reserved).not.toContain(held.vmid);
    expect(set.taken).toContain(held.vmid);
    await a.gql(UnregisterContainer, { id: ct.id }, alice);
  });

  it('counts a container one user registered as taken for every registration of the cluster', async () => {
    const vmid = 5555; // not listed by Proxmox
    const ct = (await a.gql(RegisterContainer, { input: { nodeId: aliceNode.id, vmid } }, alice)).data!
      .registerContainer;
    try {
      expect((await b.gql(IsVmidTaken, { nodeId: bobNode.id, vmid }, bob)).data!.isVmidTaken).toBe(true);
      expect(code(await b.gql(ReserveVmid, { nodeId: bobNode.id, vmid }, bob))).toBe('CONFLICT');
      // One VMID is one guest of the cluster: nobody registers it a second time, also at once.
      const twice = await Promise.all([
        b.gql(RegisterContainer, { input: { nodeId: bobNode.id, vmid } }, bob),
        a.gql(RegisterContainer, { input: { nodeId: aliceNode.id, vmid } }, alice),
      ]);
      expect(twice.map(code)).toEqual(['CONFLICT', 'CONFLICT']);
      const race = await Promise.all([
        b.gql(RegisterContainer, { input: { nodeId: bobNode.id, vmid: vmid + 1 } }, bob),
        a.gql(RegisterContainer, { input: { nodeId: aliceNode.id, vmid: vmid + 1 } }, alice),
      ]);
      expect(race.map(code).sort()).toEqual(['CONFLICT', undefined]);
      const won = race.find((r) => !r.errors)!;
      await (won === race[0] ? b : a).gql(
        UnregisterContainer,
        { id: won.data!.registerContainer.id },
        won === race[0] ? bob : alice,
      );
    } finally {
      await a.gql(UnregisterContainer, { id: ct.id }, alice);
    }
    expect((await b.gql(IsVmidTaken, { nodeId: bobNode.id, vmid }, bob)).data!.isVmidTaken).toBe(false);
  });

  it("streams one user's changes to another user's subscribers of the cluster, under their own node id", async () => {
    const sub = subscribeWs<{ nodeId: string; kind: string; version: number; vmids: number[] | null }>(
      b,
      bob,
      VmidEvents,
      { nodeId: bobNode.id },
    );
    const events = sub.events;
    try {
      await expect.poll(() => events.length).toBe(1);
      const held = (await a.gql(ReserveVmid, { nodeId: aliceNode.id, vmid: 6006, ttlSeconds: 60 }, alice)).data!
        .reserveVmid;
      await expect.poll(() => events.length).toBe(2);
      expect(events[1]).toMatchObject({
        nodeId: bobNode.id,
        kind: 'RESERVED',
        version: events[0]!.version + 1,
        vmids: [held.vmid],
      });
      await a.gql(ReleaseVmid, { nodeId: aliceNode.id, vmid: held.vmid }, alice);
      await expect.poll(() => events.length).toBe(3);
      expect(events[2]).toMatchObject({ nodeId: bobNode.id, kind: 'RELEASED' });
    } finally {
      await sub.close();
    }
  });

  it('a cluster registered again soon after its last registration was deleted has its VMID space back', async () => {
    const lone = await startTestSimulator({ guests: 3 });
    try {
      const first = await create(a, lone, alice);
      const held = (await a.gql(ReserveVmid, { nodeId: first.id, ttlSeconds: 60 }, alice)).data!.reserveVmid;
      const before = (await a.gql(VmidsTaken, { nodeId: first.id }, alice)).data!.vmidsTaken.version;
      expect((await a.gql(DeleteNode, { id: first.id }, alice)).data!.deleteNode).toBe(true);
      const again = await create(b, lone, bob);
      expect(again.clusterId).toBe(first.clusterId);
      const set = (await b.gql(VmidsTaken, { nodeId: again.id }, bob)).data!.vmidsTaken;
      expect(set.taken).toEqual([100, 101, 102]);
      expect(set.reserved).toEqual([]); // the deletion ended the space's reservations
      expect(set.version).toBeGreaterThan(before);
      expect(
        (await b.gql(ReserveVmid, { nodeId: again.id, vmid: held.vmid, ttlSeconds: 60 }, bob)).data!.reserveVmid.vmid,
      ).toBe(held.vmid);
    } finally {
      await lone.stop();
    }
  });

  it('a subscription to every node of a user follows a node registered later, through any instance', async () => {
    const dave = (await a.createUser()).token;
    const sub = subscribeWs<{ nodeId: string; kind: string }>(b, dave, VmidEvents);
    const events = sub.events;
    const later = await startTestSimulator({ guests: 2 });
    try {
      await new Promise((r) => setTimeout(r, 300)); // subscribed, with no node yet
      const node = await create(a, later, dave);
      await expect
        .poll(async () => {
          await a.gql(InvalidateVmidCache, { nodeId: node.id }, dave);
          return events.some((e) => e.nodeId === node.id && e.kind === 'INVALIDATED');
        })
        .toBe(true);
    } finally {
      await sub.close();
      await later.stop();
    }
  });

  it("leaves the cluster's space to the others when one registration is deleted; only its own subscribers are told DELETED", async () => {
    const carol = (await a.createUser()).token;
    const carolNode = await create(a, sim, carol);
    expect(carolNode.clusterId).toBe(aliceNode.clusterId);
    const watch = (server: TestServer, token: string, nodeId: string) => {
      const sub = subscribeWs<{ nodeId: string; kind: string }>(server, token, VmidEvents, { nodeId });
      return { seen: sub.events, done: () => sub.completed, close: () => sub.close() };
    };
    const carols = watch(b, carol, carolNode.id);
    const bobs = watch(b, bob, bobNode.id);
    await expect.poll(() => carols.seen.length + bobs.seen.length).toBe(2);
    const held = (await b.gql(ReserveVmid, { nodeId: bobNode.id, vmid: 7007, ttlSeconds: 60 }, bob)).data!.reserveVmid;
    await expect.poll(() => carols.seen.length).toBe(2);
    expect((await a.gql(DeleteNode, { id: carolNode.id }, carol)).data!.deleteNode).toBe(true);
    await expect.poll(() => carols.done()).toBe(true);
    expect(carols.seen.map((e) => e.kind)).toEqual(['SYNC', 'RESERVED', 'DELETED']);
    expect(carols.seen[2]!.nodeId).toBe(carolNode.id);
    await b.gql(ReleaseVmid, { nodeId: bobNode.id, vmid: 7007 }, bob);
    await b.gql(ReserveVmid, { nodeId: bobNode.id, vmid: 7007, ttlSeconds: 60 }, bob);
    await expect.poll(() => bobs.seen.length).toBe(4);
    expect(bobs.seen.map((e) => e.kind)).toEqual(['SYNC', 'RESERVED', 'RELEASED', 'RESERVED']);
    expect(bobs.done()).toBe(false);
    await Promise.all([carols.close(), bobs.close()]);
    expect((await b.gql(IsVmidTaken, { nodeId: bobNode.id, vmid: held.vmid }, bob)).data!.isVmidTaken).toBe(true);
    expect((await a.gql(VmidsTaken, { nodeId: aliceNode.id }, alice)).data!.vmidsTaken.reserved).toContain(held.vmid);
    await b.gql(ReleaseVmid, { nodeId: bobNode.id, vmid: held.vmid }, bob);
  });
});
