-- Documents shared by the replicas, one row each: the GitOps ownership record
-- ('gitops-state'), replaced whole in one statement, written under the lock of the same name.
CREATE TABLE port_runner_records (
    key        TEXT PRIMARY KEY,
    doc        TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
