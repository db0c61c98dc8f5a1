-- The back office's schema. Ids are text UUIDs and times Unix seconds (BIGINT), so the
-- same diesel schema serves SQLite and PostgreSQL; keep postgres/ in step.
CREATE TABLE admins (
    id TEXT PRIMARY KEY NOT NULL,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE accounts (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    -- bumped as the first statement of every registry write: serialises writers per account
    lock_version BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY NOT NULL,
    admin_id TEXT REFERENCES admins(id),
    user_id TEXT REFERENCES users(id),
    account_id TEXT REFERENCES accounts(id),
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE products (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE features (
    id TEXT PRIMARY KEY NOT NULL,
    product_id TEXT NOT NULL REFERENCES products(id),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    UNIQUE (product_id, name)
);

CREATE TABLE entitlements (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE line_items (
    id TEXT PRIMARY KEY NOT NULL,
    entitlement_id TEXT NOT NULL REFERENCES entitlements(id),
    account_id TEXT NOT NULL REFERENCES accounts(id),
    activation_id TEXT NOT NULL UNIQUE,
    product_id TEXT NOT NULL REFERENCES products(id),
    quantity BIGINT NOT NULL,
    starts_at BIGINT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX line_items_account ON line_items (account_id);

CREATE TABLE device_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX device_tokens_account ON device_tokens (account_id);

CREATE TABLE servers (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    hostid TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    pair_id TEXT,
    -- registered: has spoken to us in its role; expected: named by a pair, not yet heard;
    -- waiting: a backup refused with MAIN_NOT_REGISTERED
    state TEXT NOT NULL,
    first_contact_at BIGINT,
    last_contact_at BIGINT,
    reported_status TEXT,
    reported_pair_status TEXT,
    usage_json TEXT,
    last_sample_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX servers_account ON servers (account_id);
CREATE INDEX servers_pair ON servers (pair_id);

CREATE TABLE pairs (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    main_server_id TEXT NOT NULL UNIQUE REFERENCES servers(id),
    backup_server_id TEXT UNIQUE REFERENCES servers(id),
    registered_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE mappings (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    line_item_id TEXT NOT NULL REFERENCES line_items(id),
    server_id TEXT NOT NULL REFERENCES servers(id),
    quantity BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (line_item_id, server_id)
);
CREATE INDEX mappings_server ON mappings (server_id);

CREATE TABLE seen_requests (
    request_id TEXT PRIMARY KEY NOT NULL,
    seen_at BIGINT NOT NULL
);
CREATE INDEX seen_requests_seen_at ON seen_requests (seen_at);

CREATE TABLE usage_samples (
    id TEXT PRIMARY KEY NOT NULL,
    server_id TEXT NOT NULL REFERENCES servers(id),
    feature TEXT NOT NULL,
    version TEXT NOT NULL,
    count BIGINT NOT NULL,
    in_use BIGINT NOT NULL,
    sampled_at BIGINT NOT NULL
);
CREATE INDEX usage_samples_server_time ON usage_samples (server_id, sampled_at);
