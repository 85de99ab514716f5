/**
 * Proxmox simulators in a process of their own (scenario 5's reservation loads): in a
 * deployment Proxmox answers `/cluster/nextid` from another host, not from the event loop that
 * also drives the load, so its answers should not wait behind autocannon's. Driven over IPC:
 *
 *   {type:'start', guests: number[]} → {type:'started', sims: RemoteSim[]} (one per entry)
 *   {type:'close'}                   → exits
 */
import { type Simulator, startSimulator } from '../src/sim/index.js';

/** What the orchestrator needs of a simulator in this process. */
export interface RemoteSim {
  host: string;
  port: number;
  token: { id: string; secret: string };
  fingerprint: string;
  /** Its guests' VMIDs (the simulators here run no churn: they do not change). */
  vmids: number[];
}

const sims: Simulator[] = [];
// An orchestrator that died without a word leaves no simulator listening behind it.
process.on('disconnect', () => process.exit(0));

process.on('message', (m: { type: string; guests?: number[] }) => {
  if (m.type === 'start') {
    void Promise.all((m.guests ?? []).map((guests) => startSimulator({ host: '127.0.0.1', port: 0, guests }))).then(
      (started) => {
        sims.push(...started);
        const reply: RemoteSim[] = started.map((s) => ({
          host: s.host,
          port: s.port,
          token: { id: s.token.id, secret: s.token.secret },
          fingerprint: s.fingerprint,
          vmids: s.guests().map((g) => g.vmid),
        }));
        process.send!({ type: 'started', sims: reply });
      },
    );
  } else if (m.type === 'close') {
    void Promise.all(sims.map((s) => s.stop())).finally(() => process.exit(0));
  }
});
