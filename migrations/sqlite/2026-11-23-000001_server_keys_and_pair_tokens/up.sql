-- The chain of trust: each license server's current Ed25519 public key (base64url of its
-- 32 bytes) and its key ID, bound to the server in every capability answer; and each
-- failover pair's own secret, sent to its two servers only (rotated when the backup
-- changes). Keep sqlite/ and postgres/ in step.
ALTER TABLE servers ADD COLUMN server_key TEXT;
ALTER TABLE servers ADD COLUMN server_key_id TEXT;
ALTER TABLE pairs ADD COLUMN pair_token TEXT;
