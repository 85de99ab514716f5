import { randomInt } from 'node:crypto';

/**
 * The simulator's task log: what GET /cluster/tasks lists. Every guest create or destroy
 * the simulator performs ends up here as a finished task, whoever caused it, because a
 * client that polls /cluster/tasks must see changes made behind its back too.
 */

/** One entry of GET /cluster/tasks. */
export interface SimTask {
  upid: string;
  node: string;
  pid: number;
  pstart: number;
  /** Epoch seconds. */
  starttime: number;
  /** e.g. qmcreate, vzcreate, qmdestroy, vzdestroy */
  type: string;
  /** The VMID as a string for guest tasks. */
  id: string;
  /** USER@REALM or USER@REALM!TOKENID */
  user: string;
  status?: string;
  /** Epoch seconds. */
  endtime?: number;
}

/** How many tasks the log keeps (newest win). */
export const TASK_LOG_SIZE = 1000;

const hex8 = (n: number) => n.toString(16).toUpperCase().padStart(8, '0');

/** `UPID:node:PID:PSTART:STARTTIME:type:id:user:` with the numbers in 8-digit hex, as pve-common writes it. */
export function formatUpid(t: Pick<SimTask, 'node' | 'pid' | 'pstart' | 'starttime' | 'type' | 'id' | 'user'>): string {
  return `UPID:${t.node}:${hex8(t.pid)}:${hex8(t.pstart)}:${hex8(t.starttime)}:${t.type}:${t.id}:${t.user}:`;
}

export class TaskLog {
  private readonly entries: SimTask[] = [];

  /** Records a task that finished right away (the simulator's creates and destroys do) and returns it. */
  recordFinished(node: string, type: string, id: string, user: string, status = 'OK'): SimTask {
    const starttime = Math.floor(Date.now() / 1000);
    const base = {
      node,
      pid: randomInt(1000, 4_000_000),
      pstart: randomInt(1_000_000, 100_000_000),
      starttime,
      type,
      id,
      user,
    };
    const task: SimTask = { upid: formatUpid(base), ...base, status, endtime: starttime };
    this.entries.push(task);
    if (this.entries.length > TASK_LOG_SIZE) this.entries.splice(0, this.entries.length - TASK_LOG_SIZE);
    return task;
  }

  /** Newest first (recording order breaks ties within one second). */
  list(): SimTask[] {
    return this.entries
      .map((t, i) => ({ t, i }))
      .sort((a, b) => b.t.starttime - a.t.starttime || b.i - a.i)
      .map(({ t }) => ({ ...t }));
  }
}
