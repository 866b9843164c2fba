SELECT COUNT(*)
FROM auth_users
WHERE org_id = $1 AND role = 'admin' AND status = 'active' AND id <> $2
