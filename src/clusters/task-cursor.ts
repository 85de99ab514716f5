import type { ProxmoxTask } from '../proxmox/index.js';

/**
 * Tells from two answers of GET /cluster/tasks whether a guest may have been created or
 * destroyed in between (then the full listing is worth asking for). Proxmox has no push API
 * for guest changes; every create, clone, restore, destroy and migrate runs as a task whose
 * UPID is unique, so a guest task the previous answer did not hold (or held as running) is
 * the trigger.
 */

/** Task types that add or remove a VMID of the cluster, or move a guest between members. */
const GUEST_TASK = /^(?:qm|vz)(?:create|clone|restore|destroy|migrate|remotemigrate)$|^qmigrate$/;

export function isGuestTask(type: string): boolean {
  return GUEST_TASK.test(type);
}

/** What is kept of one answer (serialisable: a new lease holder goes on from it). */
export interface TaskCursor {
  /** UPIDs of finished guest tasks. */
  done: string[];
  /** UPIDs of guest tasks still running (their guest may appear or vanish when they end). */
  running: string[];
  /** The newest start time in the answer (epoch seconds; 0: the answer was empty). */
  newest: number;
}

export type TaskVerdict = 'unchanged' | 'changed' | 'unknown';

function finished(t: ProxmoxTask): boolean {
  return t.endtime !== undefined || (t.status !== undefined && t.status !== '' && t.status !== 'running');
}

export function cursorOf(tasks: readonly ProxmoxTask[]): TaskCursor {
  const done: string[] = [];
  const running: string[] = [];
  let newest = 0;
  for (const t of tasks) {
    newest = Math.max(newest, t.starttime);
    if (!isGuestTask(t.type)) continue;
    (finished(t) ? done : running).push(t.upid);
  }
  return { done, running, newest };
}

/**
 * `changed`: a guest task appeared (or a running one ended) since `previous`. `unknown`: there
 * is no previous answer, or this one no longer reaches back to it (more tasks than Proxmox
 * lists ran in between: one may have scrolled out). `unchanged` otherwise.
 */
export function compareTasks(previous: TaskCursor | null, tasks: readonly ProxmoxTask[]): TaskVerdict {
  if (!previous) return 'unknown';
  if (tasks.length === 0) return previous.newest === 0 ? 'unchanged' : 'unknown';
  let oldest = Infinity;
  for (const t of tasks) oldest = Math.min(oldest, t.starttime);
  if (previous.newest > 0 && oldest > previous.newest) return 'unknown';
  const done = new Set(previous.done);
  const running = new Set(previous.running);
  for (const t of tasks) {
    if (!isGuestTask(t.type) || done.has(t.upid)) continue;
    if (finished(t) || !running.has(t.upid)) return 'changed';
  }
  return 'unchanged';
}

/** A cursor read back from the lease's state; null when missing or not one. */
export function parseCursor(text: string | null): TaskCursor | null {
  if (!text) return null;
  try {
    const v = JSON.parse(text) as Partial<TaskCursor>;
    const strings = (a: unknown): a is string[] => Array.isArray(a) && a.every((s) => typeof s === 'string');
    if (!strings(v.done) || !strings(v.running) || typeof v.newest !== 'number') return null;
    return { done: v.done, running: v.running, newest: v.newest };
  } catch {
    return null;
  }
}
