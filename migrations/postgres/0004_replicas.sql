-- One lease per replica, renewed by its heartbeat. A run is held while its own lease (set
-- when it is accepted or claimed) or its owner's lease holds, so a heartbeat writes one row
-- however many runs wait in the replica's backlog (it used to rewrite every one of them).
-- Running and finished-unreported runs still have their own lease renewed: a replica of an
-- older build, which knows nothing of this table, does not take them over while they go on.
CREATE TABLE port_runner_replicas (
    replica     TEXT PRIMARY KEY,
    lease_until TIMESTAMPTZ NOT NULL
);
