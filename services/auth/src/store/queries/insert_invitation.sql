INSERT INTO auth_invitations
    (id, org_id, email, role, status, token_hash, invited_by, created_at, expires_at)
VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8)
