INSERT INTO auth_refresh_tokens (token_hash, session_id, org_id, user_id, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
