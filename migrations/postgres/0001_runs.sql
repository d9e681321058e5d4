-- port-runner's shared run journal (DATABASE_URL). Applied at start, once, under an
-- advisory lock, by whichever replica gets there first.

-- One row per accepted run. `owner` is the replica that runs it (or reports it) and
-- `lease_until` how long that claim holds without a heartbeat; a run whose lease ran out
-- is claimed by another replica (SELECT ... FOR UPDATE SKIP LOCKED).
CREATE TABLE port_runner_runs (
    run_id        TEXT PRIMARY KEY,
    action        TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished')),
    invocation    TEXT NOT NULL,
    owner         TEXT NOT NULL,
    lease_until   TIMESTAMPTZ NOT NULL,
    accepted_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    final_status  TEXT,
    final_summary TEXT,
    final_link    TEXT,
    -- Port acknowledged the final status: nothing left to do for this run.
    reported      BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX port_runner_runs_open ON port_runner_runs (lease_until) WHERE NOT reported;
CREATE INDEX port_runner_runs_owner ON port_runner_runs (owner) WHERE NOT reported;
CREATE INDEX port_runner_runs_done ON port_runner_runs (finished_at) WHERE reported;

-- Log batches not yet acknowledged by Port.
CREATE TABLE port_runner_pending_logs (
    id      BIGSERIAL PRIMARY KEY,
    run_id  TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX port_runner_pending_logs_run ON port_runner_pending_logs (run_id, id);

-- Per-stack / per-resource locks across replicas; a lock of a dead replica expires.
CREATE TABLE port_runner_locks (
    name        TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    owner       TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL
);
CREATE INDEX port_runner_locks_owner ON port_runner_locks (owner);
