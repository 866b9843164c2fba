SELECT id, name, slug, plan, max_users, max_concurrent_runs, max_runs_per_month, created_at
FROM auth_organizations
WHERE id = $1
