INSERT INTO auth_login_sessions
    (id, org_id, user_id, created_at, last_used_at, idle_expires_at, absolute_expires_at,
     user_agent, client_address)
VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8)
