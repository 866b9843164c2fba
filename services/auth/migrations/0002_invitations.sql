CREATE TABLE auth_invitations (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES auth_organizations (id),
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    -- pending, accepted or revoked; a pending one past expires_at is expired.
    status TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    invited_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX auth_invitations_by_org ON auth_invitations (org_id, created_at);
