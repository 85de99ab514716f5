/**
 * Summarises a V8 .cpuprofile (from BENCH_PROFILE=1): self time by package / source file and
 * the top functions. `npx tsx bench/profile-summary.ts /tmp/bench-prof-…/s1-….cpuprofile [top]`
 */
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
const file = process.argv[2];
if (!file) throw new Error('usage: profile-summary <file.cpuprofile> [top]');
const top = Number(process.argv[3] ?? 25);
const prof = JSON.parse(readFileSync(file, 'utf8')) as { nodes: Node[]; samples: number[]; timeDeltas: number[] };
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const self = new Map<number, number>();
prof.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)));
const total = [...self.values()].reduce((a, b) => a + b, 0);

const bucket = (url: string) => {
  if (!url) return '(native/gc/idle)';
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1]!;
  if (url.startsWith('node:')) return 'node:' + url.slice(5).split('/')[0];
  const s = /\/(src\/.*)$/.exec(url);
  return s ? s[1]! : url;
};
const agg = (key: (n: Node) => string) => {
  const m = new Map<string, number>();
  for (const [id, us] of self) {
    const k = key(byId.get(id)!);
    m.set(k, (m.get(k) ?? 0) + us);
  }
  return [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
};
const pct = (us: number) => `${((100 * us) / total).toFixed(1).padStart(5)}%`;
console.log(`total sampled ${(total / 1e6).toFixed(2)} s`);
console.log('\n-- self time by package / file');
for (const [k, us] of agg((n) => bucket(n.callFrame.url))) console.log(pct(us), k);
console.log('\n-- self time by function');
for (const [k, us] of agg(
  (n) => `${n.callFrame.functionName || '(anonymous)'} ${bucket(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`,
))
  console.log(pct(us), k);

// Inclusive time of frames from our own code (src/): what each of our functions costs with callees.
const parent = new Map<number, number>();
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const incl = new Map<string, number>();
for (const [id, us] of self) {
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const n = byId.get(cur)!;
    const k = `${n.callFrame.functionName || '(anonymous)'} ${bucket(n.callFrame.url)}`;
    if (seen.has(k)) continue;
    seen.add(k);
    incl.set(k, (incl.get(k) ?? 0) + us);
  }
}
console.log('\n-- inclusive time, top frames');
for (const [k, us] of [...incl.entries()]
  .filter(([k]) => !k.startsWith('(root)'))
  .sort((a, b) => b[1] - a[1])
  .slice(0, top))
  console.log(pct(us), k);
