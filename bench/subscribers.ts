/**
 * A fleet of graphql-ws subscribers in its own process (so receiving 10,000 events does not
 * run on the orchestrator's event loop). One WebSocket per subscriber. Driven over IPC:
 *
 *   {type:'clock', t}                       → {type:'clock', t, child}
 *   {type:'open', url, groups, concurrency, query?} → {type:'opened', ok, failed, errors, ms}
 *        groups: [{ token, nodeId, count }]; each subscriber waits for its first (SYNC) event;
 *        query: the subscription document (default: vmidEvents { kind version }); may be sent
 *        more than once (e.g. once per server instance), the subscribers add up
 *   {type:'arm', addedVmid?}                → (when every subscriber got one more event; with
 *                                             addedVmid, one whose vmidEvents.added holds it)
 *                                             {type:'received', times, groups}
 *   {type:'collect'}                        → {type:'received', times, groups, partial: true}
 *   {type:'close'}                          → {type:'closed'}
 *
 * Times are `performance.timeOrigin + performance.now()` at the moment the client hands the
 * event over (after graphql-ws parsed it).
 */
import { type Client, createClient } from 'graphql-ws';
import WebSocket from 'ws';

const now = () => performance.timeOrigin + performance.now();
const QUERY = 'subscription($n:ID){vmidEvents(nodeId:$n){kind version}}';

interface Sub {
  client: Client;
  dispose: () => void;
  group: number;
  synced: boolean;
  alive: boolean;
  received: number; // time of the first event after 'arm'; NaN until then
}

let subs: Sub[] = [];
let armed = false;
/** While armed: only events whose vmidEvents.added holds this VMID count (null: any event). */
let armedVmid: number | null = null;
let pending = 0;

function report(partial: boolean) {
  process.send!({ type: 'received', partial, times: subs.map((s) => s.received), groups: subs.map((s) => s.group) });
}

async function open(
  url: string,
  groups: Array<{ token: string; nodeId: string | null; count: number }>,
  concurrency: number,
  query: string,
) {
  const started = now();
  const plan: Array<{ token: string; nodeId: string | null; group: number }> = [];
  groups.forEach((g, gi) => {
    for (let i = 0; i < g.count; i++) plan.push({ token: g.token, nodeId: g.nodeId, group: gi });
  });
  let ok = 0;
  let failed = 0;
  const errors: string[] = [];
  let next = 0;
  const openOne = (p: (typeof plan)[number]) =>
    new Promise<void>((resolve) => {
      const client = createClient({
        url,
        webSocketImpl: WebSocket,
        retryAttempts: 0,
        lazy: true,
        connectionParams: { authorization: `Bearer ${p.token}` },
      });
      const sub: Sub = { client, dispose: () => undefined, group: p.group, synced: false, alive: true, received: NaN };
      let settled = false;
      const settle = (good: boolean, why?: unknown) => {
        if (settled) return;
        settled = true;
        if (good) ok++;
        else {
          sub.alive = false;
          failed++;
          if (errors.length < 5) errors.push(why instanceof Error ? why.message : JSON.stringify(why));
        }
        resolve();
      };
      sub.dispose = client.subscribe(
        { query, variables: { n: p.nodeId } },
        {
          next: (r) => {
            if (!sub.synced) {
              sub.synced = true;
              if (r.errors) settle(false, r.errors);
              else settle(true);
              return;
            }
            if (armed && sub.alive && Number.isNaN(sub.received)) {
              if (armedVmid !== null && !addedHolds(r.data, armedVmid)) return;
              sub.received = now();
              if (--pending === 0) {
                armed = false;
                report(false);
              }
            }
          },
          error: (e) => {
            sub.alive = false;
            settle(false, e instanceof Error ? e : ((e as { reason?: string; code?: number })?.code ?? e));
          },
          complete: () => {
            sub.alive = false;
            settle(false, 'completed');
          },
        },
      );
      subs.push(sub);
    });
  const worker = async () => {
    while (next < plan.length) await openOne(plan[next++]!);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  process.send!({ type: 'opened', ok, failed, errors, ms: now() - started });
}

function addedHolds(data: unknown, vmid: number): boolean {
  const added = (data as { vmidEvents?: { added?: number[] } } | null | undefined)?.vmidEvents?.added;
  return Array.isArray(added) && added.includes(vmid);
}

process.on('message', (m: any) => {
  switch (m.type) {
    case 'clock':
      process.send!({ type: 'clock', t: m.t, child: now() });
      break;
    case 'open':
      void open(m.url, m.groups, m.concurrency ?? 200, m.query ?? QUERY);
      break;
    case 'arm':
      for (const s of subs) s.received = NaN;
      pending = subs.filter((s) => s.alive).length;
      armedVmid = typeof m.addedVmid === 'number' ? m.addedVmid : null;
      armed = true;
      process.send!({ type: 'armed' });
      break;
    case 'collect':
      armed = false;
      report(true);
      break;
    case 'close':
      void (async () => {
        const all = subs;
        subs = [];
        for (const s of all) s.dispose();
        await Promise.allSettled(all.map(async (s) => s.client.dispose()));
        process.send!({ type: 'closed' });
      })();
      break;
  }
});
process.send!({ type: 'ready' });
