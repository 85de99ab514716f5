/**
 * Datacenter options (`datacenter.cfg`) the simulator models: the `next-id` range that
 * GET /cluster/nextid allocates from and GET /cluster/options reports.
 */

/** `next-id` of datacenter.cfg; either bound may be omitted. */
export interface NextIdRange {
  lower?: number;
  upper?: number;
}

/** Proxmox's defaults: 100 ≤ id < 1,000,000. */
export const DEFAULT_NEXT_ID_LOWER = 100;
export const DEFAULT_NEXT_ID_UPPER = 1_000_000;
const MIN_VMID = 100;
const MAX_VMID = 999_999_999;

/** Throws when the range could not be stored in datacenter.cfg; `{}` means "no range". */
export function validateNextIdRange(range: NextIdRange): void {
  for (const key of ['lower', 'upper'] as const) {
    const v = range[key];
    if (v === undefined) continue;
    if (!Number.isInteger(v) || v < MIN_VMID || v > MAX_VMID)
      throw new Error(`next-id ${key} must be an integer in ${MIN_VMID}..${MAX_VMID}`);
  }
  const { lower, upper } = effectiveNextIdRange(range);
  if (lower >= upper) throw new Error(`next-id lower (${lower}) must be below upper (${upper})`);
}

export function effectiveNextIdRange(range: NextIdRange | null): { lower: number; upper: number } {
  return { lower: range?.lower ?? DEFAULT_NEXT_ID_LOWER, upper: range?.upper ?? DEFAULT_NEXT_ID_UPPER };
}

/** Lowest id in [lower, upper) that `taken` does not hold; null when the range is full. */
export function lowestFreeVmid(taken: (vmid: number) => boolean, range: NextIdRange | null): number | null {
  const { lower, upper } = effectiveNextIdRange(range);
  for (let v = lower; v < upper; v++) if (!taken(v)) return v;
  return null;
}

/** The reason phrase of GET /cluster/nextid when the range is full (pve-manager prints the bounds as given). */
export function noFreeVmidReason(range: NextIdRange | null): string {
  const { lower, upper } = effectiveNextIdRange(range);
  return `unable to get any free VMID in range [${lower}, ${upper}]`;
}

/**
 * GET /cluster/options: datacenter.cfg as Proxmox sends it — property strings parsed into
 * objects whose values stay strings.
 */
export function clusterOptionsAnswer(range: NextIdRange | null): Record<string, unknown> {
  const out: Record<string, unknown> = { keyboard: 'en-us', console: 'xtermjs' };
  if (range && (range.lower !== undefined || range.upper !== undefined)) {
    out['next-id'] = {
      ...(range.lower !== undefined ? { lower: String(range.lower) } : {}),
      ...(range.upper !== undefined ? { upper: String(range.upper) } : {}),
    };
  }
  return out;
}
