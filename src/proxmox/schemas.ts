import { z } from 'zod';

/**
 * Response schemas, tolerant of what real Proxmox servers send: numbers as strings,
 * missing optional fields on offline nodes, and any number of extra fields.
 */

/** An integer sent as a number or as a decimal string ("105"). */
export const intLike = z.union([
  z.number().int(),
  z
    .string()
    .trim()
    .regex(/^\d+$/, 'not an integer')
    .transform((s) => Number.parseInt(s, 10)),
]);

const DIGITS = /^\d+$/;

/**
 * intLike's answer for a safe integer or a string of digits, checked by hand: a union's first
 * branch failing on a string costs zod its issues. null for anything else: zod decides.
 */
export function plainInt(data: unknown): number | null {
  if (typeof data === 'number') return Number.isSafeInteger(data) ? data : null;
  if (typeof data === 'string' && DIGITS.test(data)) return Number.parseInt(data, 10);
  return null;
}

const stringLike = z.union([z.string(), z.number().transform((n) => String(n))]);

/** 0/1, "0"/"1" or booleans. */
const boolLike = z
  .union([z.boolean(), z.number(), z.string()])
  .transform((v) => v === true || v === 1 || v === '1' || v === 'true');

export const versionSchema = z.looseObject({
  version: stringLike,
  release: stringLike.optional(),
  repoid: stringLike.optional(),
});

export const clusterStatusEntrySchema = z.looseObject({
  type: z.string(),
  name: stringLike.optional(),
  nodeid: intLike.optional(),
  local: intLike.optional(),
  online: intLike.optional(),
  ip: z.string().optional(),
  quorate: intLike.optional(),
});
export const clusterStatusSchema = z.array(clusterStatusEntrySchema);

/** GET /nodes: every member, with the fingerprint of its pve-ssl certificate (cluster identity). */
export const nodeListSchema = z.array(
  z.object({
    node: z.string(),
    status: z.string().optional(),
    ssl_fingerprint: z.string().optional(),
  }),
);

// Guest lists can hold 10,000 entries of ~20 fields each: plain (stripping) objects read only
// the fields below, where looseObject would visit and copy every other field too (~1/4 of a
// large refresh's CPU).
export const resourceEntrySchema = z.object({
  id: z.string().optional(),
  type: z.string(),
  vmid: intLike.optional(),
  node: z.string().optional(),
  status: z.string().optional(),
  name: stringLike.optional(),
  template: boolLike.optional(),
});
export const resourcesSchema = z.array(resourceEntrySchema);
export type ResourceEntry = z.output<typeof resourceEntrySchema>;

/**
 * resourcesSchema's answer for the shape Proxmox sends (vmid a number, the other fields
 * strings, template a number or boolean), checked by hand: zod spends ~5 ms on a 10,000-guest
 * listing. null when any entry has another shape (numbers as strings, a numeric name…): then
 * zod decides, so what is accepted, its output and its errors stay zod's.
 */
export function plainResources(data: unknown): ResourceEntry[] | null {
  if (!Array.isArray(data)) return null;
  const out = new Array<ResourceEntry>(data.length);
  for (let i = 0; i < data.length; i++) {
    const e: unknown = data[i];
    if (typeof e !== 'object' || e === null || Array.isArray(e)) return null;
    const { id, type, vmid, node, status, name, template } = e as Record<string, unknown>;
    if (typeof type !== 'string') return null;
    if (!(optionalString(id) && optionalString(node) && optionalString(status) && optionalString(name))) return null;
    if (vmid !== undefined && !Number.isSafeInteger(vmid)) return null;
    if (template !== undefined && typeof template !== 'number' && typeof template !== 'boolean') return null;
    // Only the keys present, as zod's stripping object answers.
    const entry: ResourceEntry = { type };
    if (id !== undefined) entry.id = id;
    if (vmid !== undefined) entry.vmid = vmid as number;
    if (node !== undefined) entry.node = node;
    if (status !== undefined) entry.status = status;
    if (name !== undefined) entry.name = name;
    if (template !== undefined) entry.template = template === true || template === 1;
    out[i] = entry;
  }
  return out;
}

function optionalString(v: unknown): v is string | undefined {
  return v === undefined || typeof v === 'string';
}

export const nodeGuestEntrySchema = z.object({
  vmid: intLike,
  status: z.string().optional(),
  name: stringLike.optional(),
  template: boolLike.optional(),
});
export const nodeGuestsSchema = z.array(nodeGuestEntrySchema);

export const nextIdSchema = intLike;

/** GET /cluster/options: only what pvegraph reads (values arrive as strings). */
export const clusterOptionsSchema = z.looseObject({
  'next-id': z.looseObject({ lower: intLike.optional(), upper: intLike.optional() }).optional(),
});

/**
 * One entry of GET /cluster/tasks (`upid, node, pid, pstart, starttime, type, id, user`, and
 * `status`, `endtime` once finished). Only `upid` is required: the rest can be read from it.
 */
export const taskEntrySchema = z.object({
  upid: z.string().min(1),
  node: stringLike.optional(),
  starttime: intLike.optional(),
  type: stringLike.optional(),
  id: stringLike.optional(),
  user: stringLike.optional(),
  status: stringLike.optional(),
  endtime: intLike.optional(),
});
/** GET /cluster/tasks; an entry that does not fit is left out rather than failing the list. */
export const tasksSchema = z.array(z.unknown()).transform((entries) =>
  entries.flatMap((e) => {
    const parsed = taskEntrySchema.safeParse(e);
    return parsed.success ? [parsed.data] : [];
  }),
);

/**
 * GET /access/permissions: path → { privilege: propagate } (Proxmox sends 1 when the privilege
 * propagates to sub-paths, 0 when it holds on that path only).
 */
export const permissionsSchema = z.record(z.string(), z.record(z.string(), boolLike));

export const envelopeSchema = z.looseObject({ data: z.unknown() });

export const errorBodySchema = z
  .looseObject({
    message: z.string().optional(),
    errors: z.record(z.string(), z.unknown()).nullable().optional(),
  })
  .catch({});
