-- Initial schema: users, API tokens, Proxmox nodes, registered containers.

CREATE TABLE "users" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "users_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "users_name_key" ON "users"("name");

CREATE TABLE "api_tokens" (
    "id" UUID NOT NULL,
    "user_id" UUID NOT NULL,
    "token_hash" TEXT NOT NULL,
    "prefix" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "last_used_at" TIMESTAMPTZ(3),
    "revoked_at" TIMESTAMPTZ(3),
    CONSTRAINT "api_tokens_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "api_tokens_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE UNIQUE INDEX "api_tokens_token_hash_key" ON "api_tokens"("token_hash");
CREATE INDEX "api_tokens_user_id_idx" ON "api_tokens"("user_id");

CREATE TABLE "proxmox_nodes" (
    "id" UUID NOT NULL,
    "user_id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "host" TEXT NOT NULL,
    "port" INTEGER NOT NULL DEFAULT 8006,
    "token_id" TEXT NOT NULL,
    "token_secret_enc" TEXT NOT NULL,
    "ssh_password_enc" TEXT,
    "is_default" BOOLEAN NOT NULL DEFAULT false,
    "tls_fingerprint" TEXT,
    "allow_insecure_tls" BOOLEAN NOT NULL DEFAULT false,
    "pve_version" TEXT,
    "cluster_name" TEXT,
    "pve_node_names" TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[],
    "presented_fingerprint" TEXT,
    "last_tested_at" TIMESTAMPTZ(3),
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL,
    CONSTRAINT "proxmox_nodes_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "proxmox_nodes_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "proxmox_nodes_port_range" CHECK ("port" BETWEEN 1 AND 65535),
    -- Ciphertext only: the stored form starts with the format tag of src/crypto.
    CONSTRAINT "proxmox_nodes_token_secret_encrypted" CHECK ("token_secret_enc" LIKE 'enc:%'),
    CONSTRAINT "proxmox_nodes_ssh_password_encrypted" CHECK ("ssh_password_enc" IS NULL OR "ssh_password_enc" LIKE 'enc:%')
);
CREATE UNIQUE INDEX "proxmox_nodes_user_id_name_key" ON "proxmox_nodes"("user_id", "name");
CREATE INDEX "proxmox_nodes_user_id_created_at_idx" ON "proxmox_nodes"("user_id", "created_at");
-- At most one default node per user, whatever the application does (Prisma cannot express
-- partial indexes, so this lives only here).
CREATE UNIQUE INDEX "proxmox_nodes_one_default_per_user" ON "proxmox_nodes"("user_id") WHERE "is_default";

CREATE TABLE "containers" (
    "id" UUID NOT NULL,
    "node_id" UUID NOT NULL,
    "vmid" INTEGER NOT NULL,
    "hostname" TEXT,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "containers_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "containers_node_id_fkey" FOREIGN KEY ("node_id") REFERENCES "proxmox_nodes"("id") ON DELETE RESTRICT ON UPDATE CASCADE,
    CONSTRAINT "containers_vmid_range" CHECK ("vmid" BETWEEN 100 AND 999999999)
);
CREATE UNIQUE INDEX "containers_node_id_vmid_key" ON "containers"("node_id", "vmid");
