import DataLoader from 'dataloader';
import { randomUUID } from 'node:crypto';
import type { Viewer } from '../auth/auth-service.js';
import type { SecretBox } from '../crypto/secret-box.js';
import type { Prisma, PrismaClient } from '../db/database.js';
import { isForeignKeyViolation, isRecordNotFound, isUniqueViolation } from '../db/prisma-errors.js';
import type { ProxmoxNode } from '../db/generated/prisma/client.js';
import {
  BadUserInputError,
  ConflictError,
  DomainError,
  ErrorCode,
  FailedPreconditionError,
  NotFoundError,
} from '../errors.js';
import type {
  ConnectionTestResult,
  EndpointResult,
  ProxmoxClient,
  ProxmoxEndpoint,
  ProxmoxTarget,
} from '../proxmox/index.js';
import { normalizeFingerprint } from '../proxmox/index.js';
import { bareHost } from '../proxmox/host-policy.js';
import { ClusterTargets, type NodeWithEndpoints, secretContext, WITH_ENDPOINTS } from './cluster-targets.js';
import { isUuid, MAX_FALLBACK_ENDPOINTS } from './node-validation.js';
import type { NodeRef, VmidHooks } from './vmid-hooks.js';
import { dueForRefresh, SingleFlight } from '../concurrency/single-flight.js';
import { lruCache } from '../cache/lru.js';
import { type ClusterIdentity, deriveClusterId, vmidSpaceOf } from '../clusters/identity.js';

export type { ProxmoxNode };

/** What Pothos asks the database for (relations it will resolve from the same query). */
export type NodeQuery = { include?: Prisma.ProxmoxNodeInclude; select?: Prisma.ProxmoxNodeSelect };

/** A fallback endpoint as a client gives it (port default 8006; its own TLS pin or none). */
export interface EndpointInput {
  host: string;
  port?: number | null;
  tlsFingerprint?: string | null;
}

export interface CreateNodeInput {
  name: string;
  host: string;
  port?: number | null;
  tokenId: string;
  tokenSecret: string;
  sshPassword?: string | null;
  tlsFingerprint?: string | null;
  allowInsecureTls?: boolean | null;
  /** Tried in order after the primary (host/port) when an endpoint is unreachable. */
  fallbackEndpoints?: readonly EndpointInput[] | null;
}

/** `undefined`/`null` keep a value, except: `tlsFingerprint: null` or `""` removes the pin. */
export interface UpdateNodeInput {
  id: string;
  name?: string | null;
  host?: string | null;
  port?: number | null;
  tokenId?: string | null;
  /** Omitted or empty: keep the stored one. */
  tokenSecret?: string | null;
  /** Omitted: keep; empty string: remove. */
  sshPassword?: string | null;
  tlsFingerprint?: string | null;
  allowInsecureTls?: boolean | null;
  /** Omitted/null: keep; a list replaces them all ([] removes every fallback). */
  fallbackEndpoints?: readonly EndpointInput[] | null;
}

const TLS_CODES: readonly string[] = [ErrorCode.PROXMOX_TLS_UNTRUSTED, ErrorCode.PROXMOX_TLS_FINGERPRINT_MISMATCH];
/** What a fallback answering at registration time refuses it for (unreachable is accepted). */
const REFUSAL_CODES: readonly string[] = [...TLS_CODES, ErrorCode.PROXMOX_AUTH_FAILED, ErrorCode.HOST_NOT_ALLOWED];

/**
 * A user's Proxmox nodes. Every method takes the viewer and sees only the viewer's rows:
 * another user's id answers NOT_FOUND exactly like an id that does not exist.
 */
export class NodeService {
  /** viewer+node → NodeRef, for the hot VMID reads (a node never changes owner). */
  private readonly owned = lruCache<string, { ref: NodeRef; expiresAt: number }>({ max: 10_000, now: Date.now });
  private readonly ownershipLookups = new SingleFlight<string, NodeRef>();
  /** Node owners by id, looked up together when several are needed at once (batching only). */
  private readonly ownerRows = new DataLoader<string, RefRow | null>(
    async (ids) => {
      const rows = await this.prisma.proxmoxNode.findMany({ where: { id: { in: [...ids] } }, select: REF_SELECT });
      const byId = new Map(rows.map((r) => [r.id, r]));
      return ids.map((id) => byId.get(id) ?? null);
    },
    { cache: false, maxBatchSize: 500 },
  );
  /** Counts node deletions by this instance, so an ownership lookup that raced one is not cached. */
  private deletions = 0;

  constructor(
    private readonly prisma: PrismaClient,
    private readonly secrets: SecretBox,
    private readonly proxmox: ProxmoxClient,
    private readonly vmids: VmidHooks,
    /** How long "this viewer owns this node" is trusted without the database (like tokens). */
    private readonly ownershipCacheTtlMs = 30_000,
    /** A background re-check of a cached ownership failed (not: found the node gone). Reporting only. */
    private readonly onBackgroundCheckFailed?: (err: unknown) => void,
    /** Registrations' Proxmox targets (shared with the VMID capability, which asks Proxmox through them). */
    private readonly targets: ClusterTargets = new ClusterTargets(prisma, secrets, proxmox),
  ) {}

  /** Stops the endpoint health writes (pending ones are dropped). */
  close(): void {
    this.targets.close();
  }

  /**
   * The viewer's node as a NodeRef (NOT_FOUND for anyone else's), cached: VMID reads are the
   * hot path and ownership cannot change, only end — a node deleted through another instance
   * is still answered for at most the cache lifetime (its VMID state is gone already, so a
   * read then fails with NOT_FOUND when it asks Proxmox).
   */
  async ref(viewer: Viewer, nodeId: string): Promise<NodeRef> {
    const key = `${viewer.userId}:${nodeId}`;
    const hit = this.owned.get(key);
    if (hit) {
      if (dueForRefresh(hit.expiresAt, Date.now(), this.ownershipCacheTtlMs)) {
        // NOT_FOUND is the re-check doing its job (the node is gone and was dropped).
        void this.lookupRef(viewer, nodeId, key).catch((err: unknown) => {
          if (!(err instanceof NotFoundError)) this.onBackgroundCheckFailed?.(err);
        });
      }
      return hit.ref;
    }
    return this.lookupRef(viewer, nodeId, key);
  }

  /** The database check behind ref: one at a time per viewer and node, shared. */
  private lookupRef(viewer: Viewer, nodeId: string, key: string): Promise<NodeRef> {
    return this.ownershipLookups.run(key, async () => {
      const deletionsBefore = this.deletions;
      const readAt = Date.now(); // the lifetime counts from before the read
      const row = isUuid(nodeId) ? await this.ownerRows.load(nodeId) : null;
      if (!row || row.userId !== viewer.userId) {
        // Gone (deleted through another instance): stop answering for it at once.
        this.owned.delete(key);
        throw new NotFoundError('Node', nodeId);
      }
      const ref = refOf(row);
      // A delete that committed while this lookup read the row must not be undone here.
      const expiresAt = readAt + this.ownershipCacheTtlMs;
      const left = expiresAt - Date.now();
      if (this.ownershipCacheTtlMs > 0 && left > 0 && this.deletions === deletionsBefore)
        this.owned.set(key, { ref, expiresAt }, { ttl: left });
      return ref;
    });
  }

  list(viewer: Viewer, query: NodeQuery = {}) {
    return this.prisma.proxmoxNode.findMany({
      ...query,
      where: { userId: viewer.userId },
      orderBy: [{ createdAt: 'asc' }, { id: 'asc' }],
    });
  }

  async get(viewer: Viewer, id: string, query: NodeQuery = {}): Promise<ProxmoxNode> {
    const node = isUuid(id)
      ? await this.prisma.proxmoxNode.findFirst({ ...query, where: { id, userId: viewer.userId } })
      : null;
    if (!node) throw new NotFoundError('Node', id);
    return node;
  }

  defaultNode(viewer: Viewer, query: NodeQuery = {}) {
    return this.prisma.proxmoxNode.findFirst({ ...query, where: { userId: viewer.userId, isDefault: true } });
  }

  /** Every node of the viewer as a NodeRef (for "all my nodes" subscriptions). */
  async refs(viewer: Viewer): Promise<NodeRef[]> {
    const rows = await this.prisma.proxmoxNode.findMany({
      where: { userId: viewer.userId },
      select: REF_SELECT,
      orderBy: { createdAt: 'asc' },
    });
    return rows.map(refOf);
  }

  /**
   * Tests the connection first, through the endpoints in order (the primary, and when it is
   * unreachable the fallbacks, exactly as later calls go); then asks every fallback the test
   * did not reach for /version, so a wrong pin, a foreign certificate or a host that rejects
   * the token is refused now rather than found out when the primary fails. A fallback that
   * cannot be reached now is accepted (its lastError says so). On any refusal nothing is stored.
   */
  async create(viewer: Viewer, input: CreateNodeInput, query: NodeQuery = {}): Promise<ProxmoxNode> {
    await this.assertNameFree(viewer, input.name);
    const port = input.port ?? 8006;
    const fallbacks = checkFallbacks(input.fallbackEndpoints ?? [], { host: input.host, port });
    const seen: EndpointResult[] = [];
    const target: ProxmoxTarget = {
      host: input.host,
      port,
      tokenId: input.tokenId,
      tokenSecret: input.tokenSecret,
      tlsFingerprint: input.tlsFingerprint ?? null,
      allowInsecureTls: input.allowInsecureTls ?? false,
      fallbacks,
      onEndpointResult: (r) => seen.push(r),
    };
    const test = await this.proveReachable(target);
    await this.probeFallbacks(target, seen);

    const id = randomUUID();
    const data = {
      id,
      userId: viewer.userId,
      name: input.name,
      host: target.host,
      port: target.port,
      tokenId: target.tokenId,
      tokenSecretEnc: this.secrets.encrypt(input.tokenSecret, secretContext(id, 'tokenSecret')),
      sshPasswordEnc: input.sshPassword
        ? this.secrets.encrypt(input.sshPassword, secretContext(id, 'sshPassword'))
        : null,
      tlsFingerprint: target.tlsFingerprint ?? null,
      allowInsecureTls: target.allowInsecureTls ?? false,
      ...testedFields(test),
      ...(await this.identityFields(test.identity)),
      ...primaryHealth(seen),
      fallbackEndpoints: { create: fallbackRows(fallbacks, seen) },
    };
    // The first node becomes the default: decided under the user's lock, so concurrent creates
    // and deletes see each other (the partial unique index stays the last line of defence).
    let created: ProxmoxNode;
    try {
      created = await this.withUserLock(viewer.userId, async (tx) => {
        const hasDefault = (await tx.proxmoxNode.count({ where: { userId: viewer.userId, isDefault: true } })) > 0;
        return tx.proxmoxNode.create({ ...query, data: { ...data, isDefault: !hasDefault } });
      });
    } catch (err) {
      if (isUniqueViolation(err)) throw nameTaken(input.name);
      throw err;
    }
    // A cluster whose last registration was deleted lately is registered again: its VMID space
    // comes back (see VmidHooks.nodeCreated).
    await this.vmids.nodeCreated(refOf({ id, userId: viewer.userId, clusterId: data.clusterId }));
    return created;
  }

  /** Re-tests the connection when anything it depends on changes; stores nothing on failure. */
  async update(viewer: Viewer, input: UpdateNodeInput, query: NodeQuery = {}): Promise<ProxmoxNode> {
    const node = (await this.get(viewer, input.id, { include: WITH_ENDPOINTS })) as NodeWithEndpoints;
    const data: Prisma.ProxmoxNodeUpdateInput = {};
    const newPrimary = { host: input.host ?? node.host, port: input.port ?? node.port };
    const fallbacks = input.fallbackEndpoints == null ? undefined : checkFallbacks(input.fallbackEndpoints, newPrimary);
    if (fallbacks === undefined && node.fallbackEndpoints.some((e) => sameEndpoint(e, newPrimary))) {
      throw new BadUserInputError(
        'The primary endpoint would equal one of the fallback endpoints; remove it from fallbackEndpoints.',
        {
          'input.host': 'same host and port as a stored fallback endpoint',
        },
      );
    }
    if (input.name != null && input.name !== node.name) {
      await this.assertNameFree(viewer, input.name);
      data.name = input.name;
    }
    // The stored secret only ever goes to the host it was given for: pointing the node
    // somewhere else, or trusting other certificates, needs the secret again. Otherwise a
    // stolen API token could send the Proxmox token to a host of the thief's choosing.
    const retargets =
      (input.host != null && input.host !== node.host) ||
      (input.port != null && input.port !== node.port) ||
      (input.allowInsecureTls === true && !node.allowInsecureTls) ||
      (input.tlsFingerprint !== undefined && (input.tlsFingerprint || null) !== node.tlsFingerprint);
    if (retargets && !input.tokenSecret) {
      throw new BadUserInputError('Changing host, port or TLS trust needs the token secret again.', {
        'input.tokenSecret': 'required when host, port or TLS settings change',
      });
    }
    // The same for fallbacks: without the secret a fallback may only be an endpoint the secret
    // was given for already (the primary or a fallback, same host, port and pin): reordering,
    // removing and promoting stored endpoints are fine, anything new is not.
    const stored = endpointsOfNode(node);
    const newPlace = fallbacks?.findIndex((f) => !stored.some((e) => sameEndpoint(e, f) && samePin(e, f))) ?? -1;
    if (newPlace >= 0 && !input.tokenSecret) {
      throw new BadUserInputError(
        'A fallback endpoint that is not one of the stored endpoints needs the token secret again.',
        {
          'input.tokenSecret': 'required when a new fallback endpoint (host, port or pin) is added',
        },
      );
    }
    const target = this.targets.targetOf(node);
    const seen: EndpointResult[] = [];
    target.onEndpointResult = (r) => seen.push(r);
    let connectionChanged = false;
    const change = <K extends keyof ProxmoxTarget>(key: K, value: ProxmoxTarget[K]) => {
      if (value !== target[key]) {
        target[key] = value;
        connectionChanged = true;
      }
    };
    if (input.host != null) change('host', input.host);
    if (input.port != null) change('port', input.port);
    if (input.tokenId != null) change('tokenId', input.tokenId);
    if (input.tokenSecret) change('tokenSecret', input.tokenSecret);
    if (input.tlsFingerprint !== undefined) change('tlsFingerprint', input.tlsFingerprint || null);
    if (input.allowInsecureTls != null) change('allowInsecureTls', input.allowInsecureTls);
    if (fallbacks !== undefined && !sameEndpointList(fallbacks, target.fallbacks ?? [])) {
      target.fallbacks = fallbacks;
      connectionChanged = true;
    }

    if (connectionChanged) {
      const test = await this.proveReachable(target);
      await this.probeFallbacks(target, seen);
      const primaryMoved =
        target.host !== node.host ||
        target.port !== node.port ||
        (target.tlsFingerprint ?? null) !== node.tlsFingerprint;
      Object.assign(data, primaryMoved ? { primaryLastError: null, primaryLastOkAt: null } : {}, primaryHealth(seen));
      if (fallbacks !== undefined) data.fallbackEndpoints = { deleteMany: {}, create: fallbackRows(fallbacks, seen) };
      Object.assign(data, testedFields(test), await this.identityFields(test.identity), {
        host: target.host,
        port: target.port,
        tokenId: target.tokenId,
        tlsFingerprint: target.tlsFingerprint ?? null,
        allowInsecureTls: target.allowInsecureTls ?? false,
      });
      if (input.tokenSecret)
        data.tokenSecretEnc = this.secrets.encrypt(input.tokenSecret, secretContext(node.id, 'tokenSecret'));
    }
    if (input.sshPassword !== undefined && input.sshPassword !== null) {
      data.sshPasswordEnc =
        input.sshPassword === ''
          ? null
          : this.secrets.encrypt(input.sshPassword, secretContext(node.id, 'sshPassword'));
    }

    let updated: ProxmoxNode;
    this.targets.forget(node.id);
    try {
      updated = await this.prisma.proxmoxNode.update({ ...query, where: { id: node.id }, data });
    } catch (err) {
      if (isUniqueViolation(err)) throw nameTaken(input.name ?? node.name);
      // Deleted while the connection test ran.
      if (isRecordNotFound(err)) throw new NotFoundError('Node', input.id);
      throw err;
    }
    // A read that raced the update must not keep the old target either.
    this.targets.forget(node.id);
    if (connectionChanged) {
      // What the test saw about endpoints kept as they were (the rows written above have theirs).
      this.targets.health.forget(node.id);
      if (fallbacks === undefined) for (const r of seen) if (r.index > 0) this.targets.health.record(node.id, r);
    }
    if (
      connectionChanged &&
      (target.host !== node.host || target.port !== node.port || target.tokenId !== node.tokenId)
    ) {
      await this.vmids.nodeConnectionChanged(refOf(node));
    }
    return updated;
  }

  /** Refuses while containers are registered; promotes the oldest node when the default goes. */
  async delete(viewer: Viewer, id: string): Promise<boolean> {
    const node = await this.get(viewer, id);
    let othersOfCluster = 0;
    try {
      await this.withUserLock(viewer.userId, async (tx) => {
        // Deletes of one cluster's registrations (of any users) take turns, so exactly the last
        // one sees no other left.
        if (node.clusterId) await lockCluster(tx, node.clusterId);
        const containers = await tx.container.count({ where: { nodeId: node.id } });
        if (containers > 0) throw hasContainers(containers);
        const deleted = await tx.proxmoxNode.deleteMany({ where: { id: node.id, userId: viewer.userId } });
        if (deleted.count === 0) throw new NotFoundError('Node', id);
        if (node.isDefault) {
          const oldest = await tx.proxmoxNode.findFirst({
            where: { userId: viewer.userId },
            orderBy: [{ createdAt: 'asc' }, { id: 'asc' }],
          });
          if (oldest) await tx.proxmoxNode.update({ where: { id: oldest.id }, data: { isDefault: true } });
        }
        if (node.clusterId) othersOfCluster = await tx.proxmoxNode.count({ where: { clusterId: node.clusterId } });
      });
    } catch (err) {
      // A container registered between the count and the delete: the foreign key refuses.
      if (isForeignKeyViolation(err)) throw hasContainers(1);
      throw err;
    }
    this.deletions++;
    this.owned.delete(`${viewer.userId}:${node.id}`);
    this.targets.forget(node.id);
    await this.vmids.nodeDeleted(refOf(node), othersOfCluster === 0);
    // The cluster was registered again while its space was being dropped: it comes back.
    if (
      othersOfCluster === 0 &&
      node.clusterId &&
      (await this.prisma.proxmoxNode.count({ where: { clusterId: node.clusterId } })) > 0
    ) {
      await this.vmids.nodeCreated(refOf(node));
    }
    return true;
  }

  async setDefault(viewer: Viewer, id: string, query: NodeQuery = {}): Promise<ProxmoxNode> {
    if (!isUuid(id)) throw new NotFoundError('Node', id);
    return this.withUserLock(viewer.userId, async (tx) => {
      const node = await tx.proxmoxNode.findFirst({ where: { id, userId: viewer.userId }, select: { id: true } });
      if (!node) throw new NotFoundError('Node', id);
      await tx.proxmoxNode.updateMany({
        where: { userId: viewer.userId, isDefault: true, NOT: { id: node.id } },
        data: { isDefault: false },
      });
      return tx.proxmoxNode.update({ ...query, where: { id: node.id }, data: { isDefault: true } });
    });
  }

  /** Never throws for Proxmox-side failures; a successful test refreshes what the node shows. */
  async testConnection(viewer: Viewer, id: string): Promise<ConnectionTestResult> {
    const node = (await this.get(viewer, id, { include: WITH_ENDPOINTS })) as NodeWithEndpoints;
    const result = await this.proxmox.testConnection(this.targets.targetOf(node));
    if (result.ok) {
      await this.prisma.proxmoxNode.updateMany({
        where: { id: node.id },
        data: { ...testedFields(result), ...(await this.identityFields(result.identity)) },
      });
    }
    return result;
  }

  /**
   * The cluster a registration reaches: the one already known by any of its members'
   * fingerprints (whoever registered it, through whichever member), else a new one. Not
   * identifiable (the token may not read the fingerprints): no cluster, a VMID space of its own.
   */
  private async identityFields(identity: ClusterIdentity | null) {
    const at = new Date();
    if (!identity) return { clusterId: null, memberFingerprints: [], clusterIdentifiedAt: at };
    const known = await this.prisma.proxmoxNode.findFirst({
      where: {
        clusterId: { not: null },
        clusterName: identity.clusterName,
        memberFingerprints: { hasSome: identity.memberFingerprints },
      },
      select: { clusterId: true },
      orderBy: [{ createdAt: 'asc' }, { id: 'asc' }],
    });
    return {
      clusterId: known?.clusterId ?? deriveClusterId(identity),
      memberFingerprints: identity.memberFingerprints,
      clusterIdentifiedAt: at,
    };
  }

  /**
   * Identifies the registrations stored before cluster identity existed (run at start-up, in
   * the background: no manual step). Until then each keeps a VMID space of its own. One whose
   * Proxmox cannot be reached now is left for the next start or its next connection test.
   * Answers how many were identified.
   */
  async identifyPending(): Promise<number> {
    const pending = await this.prisma.proxmoxNode.findMany({
      where: { clusterIdentifiedAt: null },
      include: WITH_ENDPOINTS,
      orderBy: [{ createdAt: 'asc' }, { id: 'asc' }],
    });
    let identified = 0;
    for (const node of pending) {
      let identity: ClusterIdentity | null;
      try {
        const target = this.targets.targetOf(node);
        const status = await this.proxmox.clusterStatus(target);
        identity = await this.proxmox.identity(target, status.clusterName);
      } catch {
        continue;
      }
      const fields = await this.identityFields(identity);
      const { count } = await this.prisma.proxmoxNode.updateMany({
        where: { id: node.id, clusterIdentifiedAt: null },
        data: fields,
      });
      identified += count;
    }
    return identified;
  }

  /**
   * Runs `fn` in a transaction holding the user's row lock: creates, deletes and default
   * switches of one user take turns, so "exactly one default" holds under any interleaving.
   * Never hold it across a Proxmox call.
   */
  private withUserLock<T>(userId: string, fn: (tx: Prisma.TransactionClient) => Promise<T>): Promise<T> {
    return this.prisma.$transaction(async (tx) => {
      await tx.$queryRaw`SELECT 1 FROM users WHERE id = ${userId}::uuid FOR UPDATE`;
      return fn(tx);
    });
  }

  /**
   * Asks each fallback the connection test did not reach for /version, in parallel. A refusal
   * (TLS, 401, host policy) refuses the registration, naming the fallback; unreachable is
   * accepted (recorded in `seen`, so it becomes the endpoint's lastError).
   */
  private async probeFallbacks(target: ProxmoxTarget, seen: EndpointResult[]): Promise<void> {
    const fallbacks = target.fallbacks ?? [];
    const reached = new Set(seen.map((r) => r.index));
    await Promise.all(
      fallbacks.map(async (fb, i) => {
        const index = i + 1;
        if (reached.has(index)) return;
        const single: ProxmoxTarget = {
          ...target,
          host: fb.host,
          port: fb.port,
          tlsFingerprint: fb.tlsFingerprint ?? null,
          fallbacks: [],
          onEndpointResult: (r) => seen.push({ ...r, index }),
        };
        try {
          await this.proxmox.version(single);
        } catch (err) {
          if (!(err instanceof DomainError) || !REFUSAL_CODES.includes(err.code)) return;
          const fp = err.extensions['fingerprint'];
          throw new DomainError(err.code, `Fallback endpoint ${bareHost(fb.host)}:${fb.port}: ${err.message}`, {
            field: `input.fallbackEndpoints.${i}`,
            ...(typeof fp === 'string' ? { fingerprint: fp } : {}),
          });
        }
      }),
    );
  }

  private async proveReachable(target: ProxmoxTarget): Promise<ConnectionTestResult> {
    const test = await this.proxmox.testConnection(target);
    if (test.ok) return test;
    const code = (test.errorCode ?? ErrorCode.PROXMOX_ERROR) as ErrorCode;
    throw new DomainError(
      code,
      test.message ?? 'The Proxmox connection test failed.',
      TLS_CODES.includes(code) && test.fingerprint ? { fingerprint: test.fingerprint } : {},
    );
  }

  private async assertNameFree(viewer: Viewer, name: string): Promise<void> {
    const existing = await this.prisma.proxmoxNode.findFirst({
      where: { userId: viewer.userId, name },
      select: { id: true },
    });
    if (existing) throw nameTaken(name);
  }
}

/** What a NodeRef is made from. */
const REF_SELECT = { id: true, userId: true, clusterId: true } as const;
type RefRow = Pick<ProxmoxNode, 'id' | 'userId' | 'clusterId'>;

export function refOf(node: Pick<ProxmoxNode, 'id' | 'userId' | 'clusterId'>): NodeRef {
  return { id: node.id, userId: node.userId, spaceId: vmidSpaceOf(node) };
}

/** Input rules the field validators cannot see: how many, and no endpoint twice. */
function checkFallbacks(list: readonly EndpointInput[], primary: { host: string; port: number }): ProxmoxEndpoint[] {
  if (list.length > MAX_FALLBACK_ENDPOINTS) {
    throw new BadUserInputError(`At most ${MAX_FALLBACK_ENDPOINTS} fallback endpoints.`, {
      'input.fallbackEndpoints': `must have at most ${MAX_FALLBACK_ENDPOINTS} entries`,
    });
  }
  const out: ProxmoxEndpoint[] = list.map((e) => ({
    host: e.host,
    port: e.port ?? 8006,
    tlsFingerprint: e.tlsFingerprint || null,
  }));
  const fields: Record<string, string> = {};
  out.forEach((e, i) => {
    if (sameEndpoint(e, primary))
      fields[`input.fallbackEndpoints.${i}.host`] = 'same host and port as the primary endpoint';
    else {
      const j = out.findIndex((o) => sameEndpoint(o, e));
      if (j < i) fields[`input.fallbackEndpoints.${i}.host`] = `same host and port as input.fallbackEndpoints.${j}`;
    }
  });
  if (Object.keys(fields).length > 0) {
    throw BadUserInputError.forFields(fields);
  }
  return out;
}

function sameEndpoint(a: { host: string; port: number }, b: { host: string; port: number }): boolean {
  return a.port === b.port && bareHost(a.host).toLowerCase() === bareHost(b.host).toLowerCase();
}

function samePin(a: { tlsFingerprint?: string | null }, b: { tlsFingerprint?: string | null }): boolean {
  const pa = a.tlsFingerprint ? (normalizeFingerprint(a.tlsFingerprint) ?? a.tlsFingerprint) : null;
  const pb = b.tlsFingerprint ? (normalizeFingerprint(b.tlsFingerprint) ?? b.tlsFingerprint) : null;
  return pa === pb;
}

function sameEndpointList(a: readonly ProxmoxEndpoint[], b: readonly ProxmoxEndpoint[]): boolean {
  return a.length === b.length && a.every((e, i) => sameEndpoint(e, b[i]!) && samePin(e, b[i]!));
}

/** The registration's endpoints as stored: the primary, then the fallbacks. */
function endpointsOfNode(node: NodeWithEndpoints): ProxmoxEndpoint[] {
  return [{ host: node.host, port: node.port, tlsFingerprint: node.tlsFingerprint }, ...node.fallbackEndpoints];
}

/** The last outcome reported for endpoint `index` as lastError/lastOkAt, or {} when none. */
function healthOf(
  seen: readonly EndpointResult[],
  index: number,
): { lastError: string | null; lastOkAt?: Date } | Record<string, never> {
  const last = seen.filter((r) => r.index === index).at(-1);
  if (!last) return {};
  return last.ok ? { lastError: null, lastOkAt: new Date() } : { lastError: last.error };
}

function primaryHealth(seen: readonly EndpointResult[]) {
  const h = healthOf(seen, 0);
  return {
    ...('lastError' in h ? { primaryLastError: h.lastError } : {}),
    ...('lastOkAt' in h ? { primaryLastOkAt: h.lastOkAt } : {}),
  };
}

function fallbackRows(fallbacks: readonly ProxmoxEndpoint[], seen: readonly EndpointResult[]) {
  return fallbacks.map((f, i) => ({
    position: i + 1,
    host: f.host,
    port: f.port,
    tlsFingerprint: f.tlsFingerprint ?? null,
    ...healthOf(seen, i + 1),
  }));
}

function testedFields(test: ConnectionTestResult) {
  return {
    pveVersion: test.version,
    clusterName: test.clusterName,
    pveNodeNames: test.pveNodeNames,
    presentedFingerprint: test.fingerprint,
    lastTestedAt: new Date(),
  };
}

/** The cluster's advisory lock, for the rest of the transaction (registrations and containers of one cluster take turns). */
export async function lockCluster(tx: Prisma.TransactionClient, clusterId: string): Promise<void> {
  await tx.$queryRaw`SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(hashtextextended(${`pvegraph:cluster:${clusterId}`}, 0))) AS l`;
}

function nameTaken(name: string): ConflictError {
  return new ConflictError(`You already have a node named "${name}".`, { field: 'name' });
}

function hasContainers(count: number): FailedPreconditionError {
  return new FailedPreconditionError(`The node still has ${count} registered container(s); unregister them first.`);
}
