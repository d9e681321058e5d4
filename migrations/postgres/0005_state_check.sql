-- The check on `state` goes. PostgreSQL rebuilds a table's CHECK expressions at the start of
-- every statement that writes the table (it reads them back from their stored text and plans
-- them), and every accept, start and verdict writes port_runner_runs: a tenth of the
-- journal's database time went to it (perf, webhook bench, runs executing). Only
-- port-runner's own statements write `state`, each with a constant of the three; recovery
-- treats any state other than 'queued' as started (see `Recovery::take_open`).
ALTER TABLE port_runner_runs DROP CONSTRAINT IF EXISTS port_runner_runs_state_check;
