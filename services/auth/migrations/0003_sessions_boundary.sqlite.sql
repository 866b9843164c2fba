-- Login sessions may move to the Session service, so no foreign key crosses
-- between them and Auth's own rows: refresh tokens carry their user, and a
-- session names its user without referencing auth_users. SQLite cannot drop
-- a constraint, so both tables are rebuilt.
CREATE TABLE auth_refresh_tokens_v3 (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT
);
INSERT INTO auth_refresh_tokens_v3 (token_hash, session_id, org_id, user_id, created_at, expires_at, rotated_at)
SELECT t.token_hash, t.session_id, t.org_id, s.user_id, t.created_at, t.expires_at, t.rotated_at
FROM auth_refresh_tokens t JOIN auth_login_sessions s ON s.id = t.session_id;
DROP TABLE auth_refresh_tokens;
ALTER TABLE auth_refresh_tokens_v3 RENAME TO auth_refresh_tokens;
CREATE INDEX auth_refresh_tokens_by_user ON auth_refresh_tokens (org_id, user_id);

CREATE TABLE auth_login_sessions_v3 (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    idle_expires_at BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT,
    user_agent TEXT NOT NULL,
    client_address TEXT NOT NULL
);
INSERT INTO auth_login_sessions_v3
SELECT id, org_id, user_id, created_at, last_used_at, idle_expires_at, absolute_expires_at,
       revoked_at, revoke_reason, user_agent, client_address
FROM auth_login_sessions;
DROP TABLE auth_login_sessions;
ALTER TABLE auth_login_sessions_v3 RENAME TO auth_login_sessions;
CREATE INDEX auth_login_sessions_by_user ON auth_login_sessions (org_id, user_id);
