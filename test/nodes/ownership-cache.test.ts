import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Viewer } from '../../src/auth/auth-service.js';
import { type Database, openPostgres } from '../../src/db/database.js';
import { NodeService } from '../../src/nodes/node-service.js';
import { createTestDatabase } from '../support/test-database.js';

/** NodeService.ref ("this viewer owns this node") against real PostgreSQL, counting its SELECTs. */
describe('node ownership cache', () => {
  let testDb: Awaited<ReturnType<typeof createTestDatabase>>;
  let db: Database;
  let sql: string[] = [];
  const TTL = 10_000;
  const nodeSelects = () => sql.filter((s) => /^SELECT .* FROM "public"\."proxmox_nodes"/.test(s)).length;

  beforeAll(async () => {
    testDb = await createTestDatabase();
    db = await openPostgres(testDb.url, { onQuery: (s) => void sql.push(s) });
  });
  afterAll(async () => {
    await db.close();
    await testDb.drop();
  });
  afterEach(() => void vi.restoreAllMocks());

  /** ref reads only the database: secrets, Proxmox and VMID hooks are never touched by it. */
  const service = () => new NodeService(db.prisma, {} as never, {} as never, {} as never, TTL);

  async function viewer(): Promise<Viewer> {
    const user = await db.prisma.user.create({ data: { name: `u-${Math.random().toString(36).slice(2)}` } });
    return { userId: user.id, userName: user.name, tokenId: '00000000-0000-0000-0000-000000000000' };
  }
  async function nodeOf(owner: Viewer): Promise<string> {
    const data = {
      userId: owner.userId,
      name: 'pve',
      host: '127.0.0.1',
      tokenId: 'root@pam!t',
      tokenSecretEnc: 'enc:never-decrypted',
    };
    return (await db.prisma.proxmoxNode.create({ data })).id;
  }

  // A burst of VMID reads for one node after its entry expired costs one ownership query, and
  // nobody else's request for that node is ever answered from the owner's entry.
  it('shares one query among concurrent calls (owner and others alike); another user gets NOT_FOUND', async () => {
    const nodes = service();
    const [owner, stranger] = await Promise.all([viewer(), viewer()]);
    const nodeId = await nodeOf(owner);
    sql = [];

    const results = await Promise.allSettled(
      Array.from({ length: 40 }, (_, i) => nodes.ref(i % 2 ? stranger : owner, nodeId)),
    );
    results.forEach((r, i) => {
      if (i % 2) expect(r).toMatchObject({ status: 'rejected', reason: { code: 'NOT_FOUND' } });
      else expect(r).toEqual({ status: 'fulfilled', value: { id: nodeId, userId: owner.userId, spaceId: nodeId } });
    });
    expect(nodeSelects()).toBe(1); // the owner's and the stranger's checks share one batched query

    // The owner's entry is cached now; the stranger still asks the database and is still refused.
    await expect(nodes.ref(owner, nodeId)).resolves.toEqual({ id: nodeId, userId: owner.userId, spaceId: nodeId });
    await expect(nodes.ref(stranger, nodeId)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(nodeSelects()).toBe(2);
  });

  // A node deleted through another instance stops being answered for within the cache lifetime,
  // even while its VMIDs are read without pause.
  it('drops a node the background re-check finds gone', async () => {
    const failures: unknown[] = [];
    const nodes = new NodeService(db.prisma, {} as never, {} as never, {} as never, TTL, (err) => failures.push(err));
    const owner = await viewer();
    const nodeId = await nodeOf(owner);
    const start = Date.now();
    const clock = vi.spyOn(Date, 'now').mockReturnValue(start); // ref has no injectable clock
    await nodes.ref(owner, nodeId);
    await db.prisma.proxmoxNode.deleteMany({ where: { id: nodeId } }); // not through this service

    clock.mockReturnValue(start + 8_500); // last fifth of the 10 s lifetime
    await expect(nodes.ref(owner, nodeId)).resolves.toEqual({ id: nodeId, userId: owner.userId, spaceId: nodeId });
    await expect
      .poll(() =>
        nodes.ref(owner, nodeId).then(
          () => 'answered',
          (e: { code?: string }) => e.code,
        ),
      )
      .toBe('NOT_FOUND');
    expect(failures).toEqual([]); // finding the node gone is not a failed re-check
  });

  // A node deleted while its ownership was being read is not put back in the cache by that
  // read: once deleteNode has answered, the node's VMIDs are NOT_FOUND at once.
  it('does not cache a lookup that read the row before a delete through the same service', async () => {
    const nodes = new NodeService(
      db.prisma,
      {} as never,
      {} as never,
      { nodeDeleted: async () => undefined } as never,
      TTL,
    );
    const owner = await viewer();
    const nodeId = await nodeOf(owner);
    let read!: () => void;
    let release!: () => void;
    const rowRead = new Promise<void>((r) => (read = r));
    const gate = new Promise<void>((r) => (release = r));
    const findMany = db.prisma.proxmoxNode.findMany.bind(db.prisma.proxmoxNode);
    vi.spyOn(db.prisma.proxmoxNode, 'findMany').mockImplementationOnce((async (args: never) => {
      const rows = await findMany(args); // the row as it was before the delete
      read();
      await gate;
      return rows;
    }) as never);
    sql = [];
    const racing = nodes.ref(owner, nodeId);
    await rowRead;
    expect(nodeSelects()).toBe(1);
    await nodes.delete(owner, nodeId);
    release();
    await expect(racing).resolves.toEqual({ id: nodeId, userId: owner.userId, spaceId: nodeId });
    await expect(nodes.ref(owner, nodeId)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(nodeSelects()).toBe(3); // the lookup, delete's own read, and the database again (not the cache)
  });
});
