-- Every change of an organization's executions, numbered per organization.
-- The writing transaction bumps the organization's counter row last, so it
-- holds that row's lock until it commits: one organization's events commit
-- in the order of their ids, and a watcher that has seen id N has seen
-- every id below it. Kept for the retention window (resume_after).
CREATE TABLE execution_event_counters (
    org_id TEXT PRIMARY KEY,
    last_event_id BIGINT NOT NULL
);
CREATE TABLE execution_events (
    org_id TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    execution_id TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    -- The execution after the change (JSON), without payload and output.
    snapshot TEXT NOT NULL,
    PRIMARY KEY (org_id, event_id)
);
CREATE INDEX execution_events_age ON execution_events (occurred_at);

-- Log lines of an execution, numbered per execution from 1.
CREATE TABLE execution_logs (
    execution_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    logged_at BIGINT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (execution_id, sequence)
);
ALTER TABLE execution_executions ADD COLUMN log_lines BIGINT NOT NULL DEFAULT 0;
-- Executions a Trellis server enqueued for an organization (order
-- fulfillment): the platform's work, outside the plan's run limits.
ALTER TABLE execution_executions ADD COLUMN system BOOLEAN NOT NULL DEFAULT FALSE;

-- The ready set: how many pending executions each organization has in
-- each queue, kept by the transactions that move executions in and out of
-- pending, so a lease finds the organizations with work without scanning
-- the backlog.
ALTER TABLE execution_turns ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
INSERT INTO execution_turns (org_id, queue, served_at)
    SELECT DISTINCT org_id, queue, 0 FROM execution_executions WHERE status = 'pending'
    ON CONFLICT (org_id, queue) DO NOTHING;
UPDATE execution_turns SET pending = (
    SELECT COUNT(*) FROM execution_executions e
    WHERE e.org_id = execution_turns.org_id AND e.queue = execution_turns.queue
    AND e.status = 'pending');
CREATE INDEX execution_turns_ready ON execution_turns (queue, served_at) WHERE pending > 0;

-- Executions an organization made in a calendar month (UTC, from its
-- first millisecond), against max_runs_per_month; seeded from the table
-- the first time a month is asked about.
CREATE TABLE execution_month_runs (
    org_id TEXT NOT NULL,
    month_start BIGINT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (org_id, month_start)
);
