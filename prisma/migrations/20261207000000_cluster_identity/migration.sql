-- The Proxmox cluster (or standalone host) a registration reaches: one VMID space per cluster.
-- cluster_id is derived from the members' certificate fingerprints (src/clusters/identity.ts);
-- NULL with cluster_identified_at set: the token could not read them (a VMID space of its own);
-- both NULL: never tried (rows from before this migration; identified at their next use).
ALTER TABLE "proxmox_nodes" ADD COLUMN "cluster_id" TEXT;
ALTER TABLE "proxmox_nodes" ADD COLUMN "member_fingerprints" TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[];
ALTER TABLE "proxmox_nodes" ADD COLUMN "cluster_identified_at" TIMESTAMPTZ(3);
CREATE INDEX "proxmox_nodes_cluster_id_idx" ON "proxmox_nodes"("cluster_id");
-- A new registration joins the cluster whose known members share a fingerprint with its own.
CREATE INDEX "proxmox_nodes_member_fingerprints_idx" ON "proxmox_nodes" USING GIN ("member_fingerprints");
