/**
 * `npm run sim -- [options]` — runs the Proxmox VE API simulator until Ctrl-C.
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { startSimulator, type SimToken } from './simulator.js';

const USAGE = `Usage: npm run sim -- [options]

  --host ADDR            listen address (default 127.0.0.1)
  --port N               listen port, 0 = random (default 8006)
  --guests N             generated guests, mixed QEMU/LXC, VMIDs from 100 (default 10)
  --cluster NAME         cluster mode with this name (omit: standalone node)
  --nodes N              number of nodes (default 1 standalone, 3 in a cluster)
  --offline NODE         start with NODE offline (repeatable)
  --gap-every N          leave one VMID free after every N guests
  --string-lxc-vmids     GET /nodes/{node}/lxc sends vmid as a string (PVE < 8.2)
  --auth-delay-ms N      delay before answering 401 (default 0; real Proxmox: ~3000)
  --next-id-lower N      datacenter next-id range, lower bound (GET /cluster/nextid)
  --next-id-upper N      datacenter next-id range, upper bound (exclusive)
  --member-endpoints     in a cluster, serve every member on its own port and certificate
  --churn-ms N           create or destroy one random guest every N ms (0 = off, default)
  --token ID=SECRET      accepted API token, e.g. root@pam!pvegraph=<uuid> (repeatable;
                         default: root@pam!pvegraph with a random secret)
  -h, --help             this text
`;

function int(name: string, v: string | undefined, dflt: number, min = 0): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    console.error(`--${name} must be an integer ≥ ${min}, got "${v}"`);
    process.exit(2);
  }
  return n;
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        host: { type: 'string' },
        port: { type: 'string' },
        guests: { type: 'string' },
        cluster: { type: 'string' },
        nodes: { type: 'string' },
        offline: { type: 'string', multiple: true },
        'gap-every': { type: 'string' },
        'string-lxc-vmids': { type: 'boolean' },
        'auth-delay-ms': { type: 'string' },
        'next-id-lower': { type: 'string' },
        'next-id-upper': { type: 'string' },
        'member-endpoints': { type: 'boolean' },
        'churn-ms': { type: 'string' },
        token: { type: 'string', multiple: true },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
    });
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  const v = parsed.values;
  if (v.help) {
    console.log(USAGE);
    return;
  }
  const tokens: SimToken[] = [];
  for (const t of v.token ?? []) {
    const eq = t.indexOf('=');
    if (eq <= 0 || eq === t.length - 1 || !t.slice(0, eq).includes('!')) {
      console.error(`--token must look like USER@REALM!TOKENID=SECRET, got "${t}"`);
      process.exit(2);
    }
    tokens.push({ id: t.slice(0, eq), secret: t.slice(eq + 1), privileges: 'all' });
  }
  if (tokens.length === 0) tokens.push({ id: 'root@pam!pvegraph', secret: randomUUID(), privileges: 'all' });

  const sim = await startSimulator({
    host: v.host ?? '127.0.0.1',
    port: int('port', v.port, 8006),
    guests: int('guests', v.guests, 10),
    clusterName: v.cluster ?? null,
    ...(v.nodes !== undefined ? { nodes: int('nodes', v.nodes, 1, 1) } : {}),
    offlineNodes: v.offline ?? [],
    vmidGapEvery: int('gap-every', v['gap-every'], 0),
    stringLxcVmids: v['string-lxc-vmids'] ?? false,
    authDelayMs: int('auth-delay-ms', v['auth-delay-ms'], 0),
    tokens,
    ...(v['next-id-lower'] !== undefined || v['next-id-upper'] !== undefined
      ? {
          nextId: {
            ...(v['next-id-lower'] !== undefined ? { lower: int('next-id-lower', v['next-id-lower'], 100, 100) } : {}),
            ...(v['next-id-upper'] !== undefined
              ? { upper: int('next-id-upper', v['next-id-upper'], 1_000_000, 101) }
              : {}),
          },
        }
      : {}),
    memberEndpoints: v['member-endpoints'] ?? false,
  });
  const churnMs = int('churn-ms', v['churn-ms'], 0);
  if (churnMs > 0) sim.startChurn({ intervalMs: churnMs });

  const t = sim.token;
  const mode = sim.clusterName
    ? `cluster "${sim.clusterName}" with nodes ${sim.nodeNames.join(', ')}`
    : `standalone node ${sim.nodeNames[0] ?? 'pve'}`;
  const offline = (v.offline ?? []).filter((n) => sim.nodeNames.includes(n));
  console.log(`Proxmox VE simulator listening on ${sim.apiUrl}
  mode:             ${mode}${offline.length ? ` (offline: ${offline.join(', ')})` : ''}
  guests:           ${sim.guests().length} (VMIDs from 100)
  TLS fingerprint:  ${sim.fingerprint}${sim.members
    .slice(1)
    .map(
      (m) => `\n  member ${m.name}:${' '.repeat(Math.max(1, 9 - m.name.length))}${m.url}/api2/json  ${m.fingerprint}`,
    )
    .join('')}${churnMs > 0 ? `\n  churn:            one guest created or destroyed every ${churnMs} ms` : ''}
  token id:         ${t.id}
  token secret:     ${t.secret}

Try it:
  curl -k -H 'Authorization: PVEAPIToken=${t.id}=${t.secret}' ${sim.apiUrl}/cluster/resources?type=vm

Add the node to pvegraph with host ${sim.host}, port ${sim.port}, tokenId ${t.id},
tokenSecret ${t.secret} and tlsFingerprint ${sim.fingerprint}.
(${sim.host} is a loopback address: start pvegraph with ALLOW_LOOPBACK_NODE_HOSTS=true.)

Control (no auth): GET ${sim.url}/_sim/stats · POST ${sim.url}/_sim/faults '{"kind":"status","status":503,"times":2}'
  · DELETE ${sim.url}/_sim/faults · POST ${sim.url}/_sim/nodes/NODE/offline|online
  · POST|DELETE ${sim.url}/_sim/guests[/VMID] · GET ${sim.url}/_sim/tasks
  · POST ${sim.url}/_sim/options/next-id '{"lower":1000}' · POST|DELETE ${sim.url}/_sim/churn '{"intervalMs":2000}'
  · POST ${sim.url}/_sim/members/NODE/unreachable|reachable
Press Ctrl-C to stop.`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    console.log(`\n${signal}: stopping the simulator`);
    sim.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

main().catch((e: unknown) => {
  console.error(`simulator failed to start: ${(e as Error).message}`);
  process.exit(1);
});
