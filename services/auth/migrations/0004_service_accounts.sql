-- Service accounts (OAuth 2.0 client credentials): workers and other
-- Trellis servers. The secret is stored only as its SHA-256; revoked_at
-- ends the account and, within the session-check interval, its tokens.
CREATE TABLE auth_service_accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX auth_service_accounts_by_name ON auth_service_accounts (name);
