DROP INDEX servers_cluster;
ALTER TABLE servers DROP COLUMN reported_cluster_status;
ALTER TABLE servers DROP COLUMN cluster_id;
DROP TABLE clusters;
