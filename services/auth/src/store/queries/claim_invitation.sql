UPDATE auth_invitations SET status = 'accepted'
WHERE id = $1 AND status = 'pending'
