import { startSimulator, type Simulator, type SimulatorOptions } from '../../src/sim/index.js';

export type { Simulator };

/** The project's HTTPS Proxmox simulator on a free loopback port. */
export function startTestSimulator(opts: SimulatorOptions = {}): Promise<Simulator> {
  return startSimulator({ host: '127.0.0.1', port: 0, ...opts });
}

/** A CreateNodeInput for the simulator, pinned to its certificate. */
export function nodeInputFor(sim: Simulator, overrides: Record<string, unknown> = {}) {
  return {
    name: `pve-${Math.random().toString(36).slice(2, 8)}`,
    host: sim.host,
    port: sim.port,
    tokenId: sim.token.id,
    tokenSecret: sim.token.secret,
    tlsFingerprint: sim.fingerprint,
    ...overrides,
  };
}
