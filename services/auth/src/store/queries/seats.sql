-- The plan's seats, the members, and the pending invitations that hold a seat.
-- $1: now; $2: the organization.
SELECT o.max_users,
    (SELECT COUNT(*) FROM auth_users u WHERE u.org_id = o.id),
    (SELECT COUNT(*) FROM auth_invitations i
     WHERE i.org_id = o.id AND i.status = 'pending' AND i.expires_at > $1)
FROM auth_organizations o
WHERE o.id = $2
