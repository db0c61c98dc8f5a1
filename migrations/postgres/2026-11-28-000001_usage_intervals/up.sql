-- Usage reports: per feature and clock-aligned interval, what the server that served it
-- counted (a server that served part of an interval reports that part; the parts add up).
-- Kept once by the unique key (a report repeated after a failover or a restart changes
-- nothing). server_id names the server row without a foreign key, and served_by its
-- hostid: the history stays when a backup leaves its pair. denials: a JSON object from
-- contract code to count. Keep sqlite/ and postgres/ in step.
CREATE TABLE usage_intervals (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    server_id TEXT NOT NULL,
    served_by TEXT NOT NULL,
    feature TEXT NOT NULL,
    version TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    served_from BIGINT NOT NULL,
    served_until BIGINT NOT NULL,
    count BIGINT NOT NULL,
    peak BIGINT NOT NULL,
    seat_secs BIGINT NOT NULL,
    grants BIGINT NOT NULL,
    denials TEXT NOT NULL,
    true_denials BIGINT NOT NULL,
    borrowed BIGINT NOT NULL,
    overdraft BIGINT NOT NULL,
    queued BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (account_id, served_by, feature, version, starts_at, served_from)
);
CREATE INDEX usage_intervals_server_time ON usage_intervals (server_id, starts_at);
