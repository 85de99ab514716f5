-- Idempotency keys of reserveVmid (src/vmids/reservation-keys.ts): what a key answered, per
-- VMID space (cluster), owner (user) and key. A repeated reserveVmid with the key answers the
-- same VMID while its reservation lives or while the VMID is a guest of the cluster (the
-- reservation was consumed), instead of reserving another. owner_id has no foreign key, as in
-- vmid_reservations; rows unused for 30 days after their reservation ended are purged.
CREATE TABLE "vmid_reservation_keys" (
    "space_id" TEXT NOT NULL,
    "owner_id" TEXT NOT NULL,
    "key" TEXT NOT NULL,
    "vmid" INTEGER NOT NULL,
    "expires_at" TIMESTAMPTZ(3) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "used_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "vmid_reservation_keys_pkey" PRIMARY KEY ("space_id", "owner_id", "key"),
    CONSTRAINT "vmid_reservation_keys_vmid_range" CHECK ("vmid" BETWEEN 100 AND 999999999)
);
CREATE INDEX "vmid_reservation_keys_used_at_idx" ON "vmid_reservation_keys"("used_at");
