SELECT id, org_id, email, role, status, invited_by, created_at, expires_at
FROM auth_invitations
WHERE token_hash = $1 AND status = 'pending' AND expires_at > $2
