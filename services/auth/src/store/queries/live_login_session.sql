SELECT id
FROM auth_login_sessions
WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL
    AND idle_expires_at > $3 AND absolute_expires_at > $3
