-- Three-member failover clusters: the cluster holds its rights through one member's row
-- (holder_server_id, like a pair's main), so a line item mapped to a cluster is counted
-- once; every member has cluster_id set. reported_cluster_status is what a member last
-- reported of its cluster (operational, partially_operational, not_operational).
-- Keep sqlite/ and postgres/ in step.
CREATE TABLE clusters (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    holder_server_id TEXT NOT NULL UNIQUE REFERENCES servers(id),
    registered_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX clusters_account ON clusters (account_id);
ALTER TABLE servers ADD COLUMN cluster_id TEXT;
ALTER TABLE servers ADD COLUMN reported_cluster_status TEXT;
CREATE INDEX servers_cluster ON servers (cluster_id);
