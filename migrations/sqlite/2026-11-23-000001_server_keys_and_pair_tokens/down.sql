ALTER TABLE pairs DROP COLUMN pair_token;
ALTER TABLE servers DROP COLUMN server_key_id;
ALTER TABLE servers DROP COLUMN server_key;
