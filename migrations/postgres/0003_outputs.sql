-- A finished run's structured output (JSON), reported with its final status: a workflow
-- node's `output`, which later nodes read.
ALTER TABLE port_runner_runs ADD COLUMN IF NOT EXISTS final_output TEXT;
