import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { graphql } from '../gql/index.js';
import { CreateNode, RegisterContainer, UnregisterContainer } from '../nodes/documents.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { InvalidateVmidCache, RefreshVmidCache, VmidsTaken } from './documents.js';

const NodeGuests = graphql(`
  query NodeGuests($id: ID!) {
    node(id: $id) {
      id
      guests {
        vmid
        type
        name
        node
        status
      }
    }
  }
`);

const NodeVmidsAndGuests = graphql(`
  query NodeVmidsAndGuests($id: ID!) {
    node(id: $id) {
      id
      vmids {
        taken
        fromCache
      }
      guests {
        vmid
      }
    }
  }
`);

const code = (res: { errors?: Array<{ extensions?: Record<string, unknown> }> }) => res.errors?.[0]?.extensions?.code;

const OFFLINE = 'pve3';

/** What Proxmox lists of the simulator's guests: an offline member's only as `unknown`, without a name. */
function listed(sim: Simulator) {
  return sim
    .guests()
    .sort((a, b) => a.vmid - b.vmid)
    .map((g) => ({
      vmid: g.vmid,
      type: g.type === 'lxc' ? 'LXC' : 'QEMU',
      name: g.node === OFFLINE ? null : g.name,
      node: g.node,
      status: g.node === OFFLINE ? 'unknown' : g.status,
    }));
}

describe.each([
  ['Redis', true],
  ['embedded (in-process)', false],
] as const)('ProxmoxNode.guests with %s cache', (_name, redis) => {
  let server: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;
  const resources = () => sim.stats.count('/cluster/resources');

  beforeAll(async () => {
    // Six generated guests over pve1-pve3 (its containers on pve3, offline) and a container on pve2.
    [server, sim] = await Promise.all([
      startTestServer({ redis }),
      startTestSimulator({ guests: 6, clusterName: 'lab', nodes: 3, offlineNodes: [OFFLINE] }),
    ]);
    sim.addGuest({ vmid: 300, type: 'lxc', node: 'pve2', name: 'ct-online', status: 'stopped' });
    token = (await server.createUser()).token;
    nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  it("lists the cluster's guests ascending with vmid, type, name, member and status; an offline member's are unknown", async () => {
    const res = await server.gql(NodeGuests, { id: nodeId }, token);
    expect(res.errors).toBeUndefined();
    const guests = res.data!.node!.guests;
    expect(guests).toEqual(listed(sim));
    expect(guests.find((g) => g.vmid === 300)).toEqual({
      vmid: 300,
      type: 'LXC',
      name: 'ct-online',
      node: 'pve2',
      status: 'stopped',
    });
    expect(guests.some((g) => g.type === 'QEMU' && g.status === 'running')).toBe(true);
    expect(guests.filter((g) => g.node === OFFLINE).map((g) => [g.type, g.status, g.name])).toEqual([
      ['LXC', 'unknown', null],
      ['LXC', 'unknown', null],
    ]);
  });

  it('serves vmids and guests from the same cached listing: one /cluster/resources for both', async () => {
    await server.gql(InvalidateVmidCache, { nodeId }, token);
    const before = resources();
    const both = (await server.gql(NodeVmidsAndGuests, { id: nodeId }, token)).data!.node!;
    expect(both.vmids.fromCache).toBe(false);
    expect(both.guests.map((g) => g.vmid)).toEqual(both.vmids.taken);
    expect(resources()).toBe(before + 1);
    expect((await server.gql(NodeGuests, { id: nodeId }, token)).data!.node!.guests).toEqual(listed(sim));
    expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken.fromCache).toBe(true);
    expect(resources()).toBe(before + 1);
    // Guests first, then the set: still one listing.
    await server.gql(InvalidateVmidCache, { nodeId }, token);
    expect((await server.gql(NodeGuests, { id: nodeId }, token)).data!.node!.guests).toEqual(listed(sim));
    expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken).toMatchObject({
      fromCache: true,
      taken: listed(sim).map((g) => g.vmid),
    });
    expect(resources()).toBe(before + 2);
  });

  it('follows a refresh; a registered container Proxmox does not list is taken but is no guest', async () => {
    await server.gql(NodeGuests, { id: nodeId }, token); // cached
    sim.addGuest({ vmid: 4242, type: 'qemu', node: 'pve1', name: 'made-elsewhere', status: 'running' });
    try {
      const before = resources();
      // Cached: not seen yet, and Proxmox is not asked.
      expect((await server.gql(NodeGuests, { id: nodeId }, token)).data!.node!.guests.map((g) => g.vmid)).not.toContain(
        4242,
      );
      expect(resources()).toBe(before);
      expect((await server.gql(RefreshVmidCache, { nodeId }, token)).data!.refreshVmidCache.taken).toContain(4242);
      const guests = (await server.gql(NodeGuests, { id: nodeId }, token)).data!.node!.guests;
      expect(guests).toEqual(listed(sim));
      expect(guests.find((g) => g.vmid === 4242)).toEqual({
        vmid: 4242,
        type: 'QEMU',
        name: 'made-elsewhere',
        node: 'pve1',
        status: 'running',
      });
      expect(resources()).toBe(before + 1);

      const container = (await server.gql(RegisterContainer, { input: { nodeId, vmid: 4300 } }, token)).data!
        .registerContainer;
      try {
        expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken.taken).toContain(4300);
        expect(
          (await server.gql(NodeGuests, { id: nodeId }, token)).data!.node!.guests.map((g) => g.vmid),
        ).not.toContain(4300);
        // Also after a fill, which adds registered containers to the set, not to the guests.
        expect((await server.gql(RefreshVmidCache, { nodeId }, token)).data!.refreshVmidCache.taken).toContain(4300);
        expect((await server.gql(NodeGuests, { id: nodeId }, token)).data!.node!.guests).toEqual(listed(sim));
      } finally {
        await server.gql(UnregisterContainer, { id: container.id }, token);
      }
    } finally {
      sim.removeGuest(4242);
    }
  });

  it("answers NOT_FOUND for another user's node", async () => {
    const other = (await server.createUser()).token;
    const res = await server.gql(NodeGuests, { id: nodeId }, other);
    expect(code(res)).toBe('NOT_FOUND');
    expect(res.data?.node ?? null).toBeNull();
  });
});
