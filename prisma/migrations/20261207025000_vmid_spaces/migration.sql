-- The highest version each VMID space (cluster) is known to have reached, written with its
-- reservations and after its other changes (src/vmids/reservation-record.ts). A space that
-- Redis lost goes on from here: its version never goes backwards.
CREATE TABLE "vmid_spaces" (
    "space_id" TEXT NOT NULL,
    "version" BIGINT NOT NULL,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "vmid_spaces_pkey" PRIMARY KEY ("space_id")
);
