-- Portable across SQLite and PostgreSQL: ids are UUID text, times are
-- milliseconds since the Unix epoch.
CREATE TABLE auth_organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL,
    max_users BIGINT NOT NULL,
    max_concurrent_runs BIGINT NOT NULL,
    max_runs_per_month BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE auth_users (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES auth_organizations (id),
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_login_at BIGINT
);
CREATE INDEX auth_users_by_org ON auth_users (org_id, created_at);

-- Login sessions: sliding (idle) and absolute expiry; revoked_at ends them.
CREATE TABLE auth_login_sessions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES auth_users (id),
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    idle_expires_at BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT,
    user_agent TEXT NOT NULL,
    client_address TEXT NOT NULL
);
CREATE INDEX auth_login_sessions_by_user ON auth_login_sessions (org_id, user_id);

-- Refresh tokens are stored only as SHA-256 hashes; rotated_at marks one
-- that was exchanged, so presenting it again is detectable reuse.
CREATE TABLE auth_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES auth_login_sessions (id),
    org_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT
);
CREATE INDEX auth_refresh_tokens_by_session ON auth_refresh_tokens (session_id);
