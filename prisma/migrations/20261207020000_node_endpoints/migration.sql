-- Several endpoints per registration, with failover (src/proxmox/client.ts). The registration's
-- own host/port/tls_fingerprint stay its primary endpoint; its fallbacks are rows of their own.
--
-- A table rather than columns or a JSON array on proxmox_nodes:
-- - ordered ("position", 1 = first fallback) and as many as the API allows, each with its own
--   TLS pin, without a fixed set of columns;
-- - health (last_error, last_ok_at) is written by an UPDATE of one row, guarded by the
--   endpoint's host and port, so a late report about a replaced endpoint never lands on its
--   successor, and concurrent reports about two endpoints never rewrite each other (a JSON
--   array would be read-modify-written as a whole);
-- - proxmox_nodes, read on every VMID call, stays narrow; deleting a registration deletes its
--   endpoints (ON DELETE CASCADE).
-- The primary's health lives on proxmox_nodes (primary_last_error, primary_last_ok_at), next
-- to the host and port it describes, and is reset when they change.
CREATE TABLE "proxmox_node_endpoints" (
    "id" UUID NOT NULL,
    "node_id" UUID NOT NULL,
    "position" INTEGER NOT NULL,
    "host" TEXT NOT NULL,
    "port" INTEGER NOT NULL,
    "tls_fingerprint" TEXT,
    "last_error" TEXT,
    "last_ok_at" TIMESTAMPTZ(3),
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "proxmox_node_endpoints_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "proxmox_node_endpoints_node_id_fkey" FOREIGN KEY ("node_id") REFERENCES "proxmox_nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "proxmox_node_endpoints_position_range" CHECK ("position" >= 1),
    CONSTRAINT "proxmox_node_endpoints_port_range" CHECK ("port" BETWEEN 1 AND 65535)
);
CREATE UNIQUE INDEX "proxmox_node_endpoints_node_id_position_key" ON "proxmox_node_endpoints"("node_id", "position");

ALTER TABLE "proxmox_nodes" ADD COLUMN "primary_last_error" TEXT;
ALTER TABLE "proxmox_nodes" ADD COLUMN "primary_last_ok_at" TIMESTAMPTZ(3);
