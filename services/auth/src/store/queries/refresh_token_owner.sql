SELECT session_id, org_id, user_id, rotated_at
FROM auth_refresh_tokens
WHERE token_hash = $1
