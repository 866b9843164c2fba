UPDATE auth_login_sessions SET last_used_at = $1, idle_expires_at = $2
WHERE org_id = $3 AND id = $4 AND revoked_at IS NULL
    AND idle_expires_at > $1 AND absolute_expires_at > $1
