-- The durable record of VMID reservations (src/vmids/reservation-record.ts). The fast store
-- (Redis, or memory when embedded) decides each reservation atomically; this keeps it across
-- the loss of Redis data and instance restarts. One row per VMID space (cluster) and VMID; a
-- row whose time is up counts as absent and is taken over by the next reservation of the VMID.
CREATE TABLE "vmid_reservations" (
    "space_id" TEXT NOT NULL,
    "vmid" INTEGER NOT NULL,
    "owner_id" TEXT NOT NULL,
    "expires_at" TIMESTAMPTZ(3) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "vmid_reservations_pkey" PRIMARY KEY ("space_id", "vmid"),
    CONSTRAINT "vmid_reservations_vmid_range" CHECK ("vmid" BETWEEN 100 AND 999999999)
);
CREATE INDEX "vmid_reservations_expires_at_idx" ON "vmid_reservations"("expires_at");
