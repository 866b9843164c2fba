SELECT COUNT(*)
FROM auth_invitations
WHERE org_id = $1 AND email = $2 AND status = 'pending' AND expires_at > $3
