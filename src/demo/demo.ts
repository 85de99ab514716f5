import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import { assertNoEmbeddedServer, claimEmbeddedLock } from '../db/embedded-lock.js';
import { type App, createApp } from '../http/app.js';
import { endpointKey } from '../proxmox/host-policy.js';
import { openRuntime, type Runtime } from '../runtime.js';
import { type Simulator, startSimulator } from '../sim/index.js';

/** The subscription the printed GraphiQL link opens with. */
export const DEMO_SUBSCRIPTION = `subscription LiveVmids {
  vmidEvents { kind nodeId version added removed at }
}`;

/** How the demo's simulated cluster looks and moves. */
const CLUSTER = { name: 'demo', nodes: 3, guests: 24, churnMs: 3_000 } as const;

export interface Demo {
  /** http://host:port (GraphQL at /graphql). */
  url: string;
  token: string;
  nodeId: string;
  simulator: Simulator;
  stop(): Promise<void>;
}

/**
 * `npm run demo`: a fresh embedded server in `<data dir>/demo` (wiped at every start, so it
 * never mixes with the real data in the data dir) next to the Proxmox VE simulator running a
 * three-member cluster with guest churn, registered for the user `admin`. Loopback stays
 * refused for node hosts except the simulator's own endpoint.
 */
export async function startDemo(base: Config, log: Logger): Promise<Demo> {
  const dataDir = path.join(base.dataDir, 'demo');
  await assertNoEmbeddedServer(dataDir);
  await rm(dataDir, { recursive: true, force: true });
  const releaseLock = await claimEmbeddedLock(dataDir);
  const stops: Array<() => Promise<unknown>> = [releaseLock];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
  };
  try {
    const simulator = await startSimulator({
      host: '127.0.0.1',
      port: 0,
      clusterName: CLUSTER.name,
      nodes: CLUSTER.nodes,
      guests: CLUSTER.guests,
    });
    stops.push(() => simulator.stop());
    simulator.startChurn({ intervalMs: CLUSTER.churnMs, minGuests: CLUSTER.guests / 2, maxGuests: CLUSTER.guests * 2 });

    const config: Config = {
      ...base,
      databaseUrl: undefined,
      redis: undefined,
      dataDir,
      // The demo's data is wiped at its next start: a key of its own, never written anywhere.
      encryptionKey: randomBytes(32),
      previousEncryptionKeys: [],
      loopbackNodeEndpoints: [endpointKey(simulator.host, simulator.port)],
    };
    const runtime: Runtime = await openRuntime(config, log);
    stops.push(() => runtime.close());
    const { token } = await runtime.services.auth.createUser('admin');

    const app: App = createApp({ services: runtime.services, log, config });
    const url = await app.listen(config.port, config.host);
    stops.push(() => app.stop());

    const nodeId = await registerSimulator(url, token, simulator);
    return { url, token, nodeId, simulator, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** Registers the simulated cluster through the public API, as a newcomer would. */
async function registerSimulator(url: string, token: string, sim: Simulator): Promise<string> {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({
      query: 'mutation AddDemoCluster($input: CreateNodeInput!) { createNode(input: $input) { id } }',
      variables: {
        input: {
          name: 'demo',
          host: sim.host,
          port: sim.port,
          tokenId: sim.token.id,
          tokenSecret: sim.token.secret,
          tlsFingerprint: sim.fingerprint,
        },
      },
    }),
  });
  const body = (await res.json()) as {
    data?: { createNode: { id: string } } | null;
    errors?: Array<{ message: string }>;
  };
  const id = body.data?.createNode.id;
  if (!id) throw new Error(`registering the simulated cluster failed: ${body.errors?.[0]?.message ?? res.status}`);
  return id;
}
