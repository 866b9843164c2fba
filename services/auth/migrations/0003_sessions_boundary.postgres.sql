-- Login sessions may move to the Session service, so no foreign key crosses
-- between them and Auth's own rows: refresh tokens carry their user, and a
-- session names its user without referencing auth_users.
ALTER TABLE auth_refresh_tokens ADD COLUMN user_id TEXT;
UPDATE auth_refresh_tokens t SET user_id = s.user_id
FROM auth_login_sessions s WHERE s.id = t.session_id;
ALTER TABLE auth_refresh_tokens ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE auth_refresh_tokens DROP CONSTRAINT auth_refresh_tokens_session_id_fkey;
DROP INDEX auth_refresh_tokens_by_session;
CREATE INDEX auth_refresh_tokens_by_user ON auth_refresh_tokens (org_id, user_id);
ALTER TABLE auth_login_sessions DROP CONSTRAINT auth_login_sessions_user_id_fkey;
