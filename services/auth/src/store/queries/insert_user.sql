INSERT INTO auth_users (id, org_id, email, name, password_hash, role, status, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
