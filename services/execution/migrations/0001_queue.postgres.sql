-- The durable queue. status: pending, running, or a final one; a pending
-- execution is eligible once next_attempt_at has passed (backoff between
-- attempts). A running one holds a lease until lease_expires_at.
CREATE TABLE execution_executions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    spec TEXT NOT NULL,
    payload BYTEA NOT NULL,
    output BYTEA NOT NULL,
    error TEXT NOT NULL,
    analysis TEXT NOT NULL,
    cancel_requested BOOLEAN NOT NULL,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    next_attempt_at BIGINT NOT NULL,
    lease_id TEXT,
    lease_expires_at BIGINT,
    lease_ms BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX execution_idempotency ON execution_executions (org_id, idempotency_key);
CREATE UNIQUE INDEX execution_lease ON execution_executions (lease_id);
CREATE INDEX execution_newest ON execution_executions (org_id, created_at DESC, id DESC);
CREATE INDEX execution_ready ON execution_executions (queue, status, org_id, priority DESC, next_attempt_at);
CREATE INDEX execution_running ON execution_executions (org_id, status);
CREATE INDEX execution_leases_due ON execution_executions (status, lease_expires_at);

-- When each organization was last served from each queue: leases go to
-- the least recently served first, so one organization's backlog cannot
-- starve another's.
CREATE TABLE execution_turns (
    org_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    served_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, queue)
);
