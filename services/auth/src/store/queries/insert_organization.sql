INSERT INTO auth_organizations
    (id, name, slug, plan, max_users, max_concurrent_runs, max_runs_per_month, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
