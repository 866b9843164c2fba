-- A lease picks an organization's next execution in (priority, created_at,
-- id) order; with the index in that order the pick reads the first eligible
-- row instead of sorting the organization's whole backlog on every pick.
DROP INDEX execution_ready;
CREATE INDEX execution_ready ON execution_executions
    (queue, status, org_id, priority DESC, created_at, id);
-- An organization at its max_concurrent_runs is offered the platform's
-- executions only: found without walking its backlog of its own.
CREATE INDEX execution_ready_system ON execution_executions
    (queue, org_id, priority DESC, created_at, id) WHERE status = 'pending' AND system = TRUE;
