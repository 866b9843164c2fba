UPDATE auth_organizations SET name = $1
WHERE id = $2
RETURNING id, name, slug, plan, max_users, max_concurrent_runs, max_runs_per_month, created_at
