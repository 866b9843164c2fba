-- Every session, LOGIN and WORK. Times are Unix milliseconds. A session is
-- live while now < idle_expires_at and now < absolute_expires_at; ended
-- sessions are deleted, expired ones swept.
CREATE TABLE session_sessions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_activity_at BIGINT NOT NULL,
    idle_expires_at BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    -- A JSON object of strings, bounded before it is written.
    metadata TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    client_address TEXT NOT NULL
);
CREATE INDEX session_sessions_by_user ON session_sessions (org_id, user_id, created_at, id);
CREATE INDEX session_sessions_by_org ON session_sessions (org_id, idle_expires_at);
CREATE INDEX session_sessions_idle_expiry ON session_sessions (idle_expires_at);
CREATE INDEX session_sessions_absolute_expiry ON session_sessions (absolute_expires_at);
