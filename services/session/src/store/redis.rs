//! [`SessionStore`] in Redis: each session one string with a TTL, plus
//! per-organization sorted sets (by expiry, last activity and creation) for
//! counts and per-user sets for listing. An organization's keys share one
//! hash tag, so every script touches one cluster slot. Index entries of
//! expired sessions are pruned as the organization is written and read.

use std::collections::BTreeMap;

use redis::Script;
use serde::{Deserialize, Serialize};
use trellis_store::{Page, RedisPool, StoreError};
use uuid::Uuid;

use super::{SessionCounts, SessionKind, SessionRecord, SessionStore};

/// Expired index entries removed per write, so pruning never stalls Redis.
const PRUNE_PER_WRITE: i64 = 100;

/// A session as stored: short names, the key holds the ids.
#[derive(Serialize, Deserialize)]
struct Stored {
    u: Uuid,
    /// `l`ogin or `w`ork.
    k: char,
    c: i64,
    a: i64,
    i: i64,
    x: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    m: BTreeMap<String, String>,
    t: String,
    ua: String,
    ip: String,
}

impl Stored {
    fn of(session: &SessionRecord) -> Stored {
        Stored {
            u: session.user_id,
            k: match session.kind {
                SessionKind::Login => 'l',
                SessionKind::Work => 'w',
            },
            c: session.created_at,
            a: session.last_activity_at,
            i: session.idle_expires_at,
            x: session.absolute_expires_at,
            m: session.metadata.clone(),
            t: session.csrf_token.clone(),
            ua: session.user_agent.clone(),
            ip: session.client_address.clone(),
        }
    }

    fn into_record(self, org_id: Uuid, id: Uuid) -> SessionRecord {
        SessionRecord {
            id,
            org_id,
            user_id: self.u,
            kind: if self.k == 'l' {
                SessionKind::Login
            } else {
                SessionKind::Work
            },
            created_at: self.c,
            last_activity_at: self.a,
            idle_expires_at: self.i,
            absolute_expires_at: self.x,
            metadata: self.m,
            csrf_token: self.t,
            user_agent: self.ua,
            client_address: self.ip,
        }
    }
}

fn encode(session: &SessionRecord) -> Result<String, StoreError> {
    serde_json::to_string(&Stored::of(session)).map_err(|e| corrupt(&e))
}

fn decode(org_id: Uuid, id: Uuid, value: &str) -> Result<SessionRecord, StoreError> {
    let stored: Stored = serde_json::from_str(value).map_err(|e| corrupt(&e))?;
    Ok(stored.into_record(org_id, id))
}

fn corrupt(error: &serde_json::Error) -> StoreError {
    StoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unreadable session",
        error.to_string(),
    )))
}

/// Prunes expired members of the expiry set (and their entries in the
/// activity and creation sets). KEYS[1..3] = exp, act, new; ARGV[1] = now,
/// ARGV[2] = how many at most.
const PRUNE: &str = r"
local function prune(exp, act, new, now, limit)
  local left = tonumber(limit)
  while left > 0 do
    -- In batches: unpack is bounded by Lua's stack.
    local gone = redis.call('ZRANGE', exp, '-inf', now, 'BYSCORE', 'LIMIT', 0, math.min(left, 1000))
    if #gone == 0 then return end
    redis.call('ZREM', exp, unpack(gone))
    redis.call('ZREM', act, unpack(gone))
    redis.call('ZREM', new, unpack(gone))
    left = left - #gone
  end
end
-- Times are the caller's clock: TTLs are relative, never PEXPIREAT.
local function extend(key, ttl)
  local current = redis.call('PTTL', key)
  if current == -1 or current < ttl then redis.call('PEXPIRE', key, ttl) end
end
";

/// KEYS: session, user, exp, act, new. ARGV: value, ttl, id, created,
/// expires, last activity, ttl of the absolute expiry, now, prune limit.
const INSERT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
prune(KEYS[3], KEYS[4], KEYS[5], ARGV[8], ARGV[9])
-- The user's own set: drop sessions gone since.
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('EXISTS', string.sub(KEYS[1], 1, -37) .. id) == 0 then
    redis.call('ZREM', KEYS[2], id)
  end
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3])
for i = 2, 5 do extend(KEYS[i], tonumber(ARGV[7])) end
";

/// KEYS: session, exp, act. ARGV: value, ttl, id, expires, last activity.
/// Only a session that still exists is written: a touch never brings back
/// one deleted meanwhile.
const TOUCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
return 1
";

/// KEYS: session, user, exp, act, new. ARGV: id. The value, if it existed.
const DELETE: &str = r"
local value = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
for i = 2, 5 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return value
";

/// KEYS: exp, act, new. ARGV: now, since, prune limit.
/// {live, active, oldest created, newest created}.
const COUNTS: &str = r"
prune(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3])
local live = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
local active = redis.call('ZCOUNT', KEYS[2], ARGV[2], '+inf')
local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
return {live, active, oldest[2] or '', newest[2] or ''}
";

/// Sessions in Redis under `prefix`.
#[derive(Clone)]
pub struct RedisSessions {
    pool: RedisPool,
    prefix: String,
    insert: Script,
    touch: Script,
    delete: Script,
    counts: Script,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The keys of one organization.
struct OrgKeys {
    /// Everything before the session id.
    session_base: String,
    exp: String,
    act: String,
    new: String,
    user_base: String,
}

impl OrgKeys {
    fn session(&self, id: Uuid) -> String {
        format!("{}{}", self.session_base, id.hyphenated())
    }

    fn user(&self, user_id: Uuid) -> String {
        format!("{}{}", self.user_base, user_id.hyphenated())
    }
}

impl RedisSessions {
    pub fn new(pool: RedisPool, prefix: impl Into<String>) -> Self {
        let with_prune = |body: &str| Script::new(&format!("{PRUNE}\n{body}"));
        RedisSessions {
            pool,
            prefix: prefix.into(),
            insert: with_prune(INSERT),
            touch: Script::new(TOUCH),
            delete: Script::new(DELETE),
            counts: with_prune(COUNTS),
        }
    }

    fn keys(&self, org_id: Uuid) -> OrgKeys {
        // {org}: one hash tag, one cluster slot per organization.
        let base = format!("{}sess:{{{}}}:", self.prefix, org_id.hyphenated());
        OrgKeys {
            session_base: format!("{base}s:"),
            exp: format!("{base}exp"),
            act: format!("{base}act"),
            new: format!("{base}new"),
            user_base: format!("{base}u:"),
        }
    }

    async fn connection(
        &self,
    ) -> Result<bb8::PooledConnection<'_, bb8_redis::RedisConnectionManager>, StoreError> {
        Ok(self.pool.get().await?)
    }

    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection().await?;
        Ok(redis::cmd("GET")
            .arg(key)
            .query_async(&mut *connection)
            .await?)
    }
}

fn ttl_ms(session: &SessionRecord, now: i64) -> i64 {
    (session.expires_at() - now).max(1)
}

#[tonic::async_trait]
impl SessionStore for RedisSessions {
    async fn insert(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let keys = self.keys(session.org_id);
        let now = session.last_activity_at;
        let mut connection = self.connection().await?;
        let () = self
            .insert
            .key(keys.session(session.id))
            .key(keys.user(session.user_id))
            .key(&keys.exp)
            .key(&keys.act)
            .key(&keys.new)
            .arg(encode(session)?)
            .arg(ttl_ms(session, now))
            .arg(session.id.hyphenated().to_string())
            .arg(session.created_at)
            .arg(session.expires_at())
            .arg(session.last_activity_at)
            .arg((session.absolute_expires_at - now).max(1))
            .arg(now)
            .arg(PRUNE_PER_WRITE)
            .invoke_async(&mut *connection)
            .await?;
        Ok(())
    }

    async fn get(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(value) = self.get_value(&self.keys(org_id).session(id)).await? else {
            return Ok(None);
        };
        let session = decode(org_id, id, &value)?;
        Ok(session.is_live(now).then_some(session))
    }

    async fn touch(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
        idle_ms: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(session) = self.get(org_id, id, now).await? else {
            return Ok(None);
        };
        let Some(session) = session.used_at(now, idle_ms) else {
            return Ok(Some(session));
        };
        let keys = self.keys(org_id);
        let mut connection = self.connection().await?;
        let written: i64 = self
            .touch
            .key(keys.session(id))
            .key(&keys.exp)
            .key(&keys.act)
            .arg(encode(&session)?)
            .arg(ttl_ms(&session, now))
            .arg(id.hyphenated().to_string())
            .arg(session.expires_at())
            .arg(now)
            .invoke_async(&mut *connection)
            .await?;
        Ok((written == 1).then_some(session))
    }

    async fn list_for_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        now: i64,
        page: &Page,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let keys = self.keys(org_id);
        let mut connection = self.connection().await?;
        // A user's sessions are few (capped when they are made): read the
        // set whole and page in order here.
        let members: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(keys.user(user_id))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut *connection)
            .await?;
        let mut candidates: Vec<(i64, Uuid)> = members
            .into_iter()
            .filter_map(|(id, created)| Some((created, Uuid::parse_str(&id).ok()?)))
            .filter(|(created, id)| match &page.after {
                None => true,
                Some((after_created, after_id)) => {
                    *created < *after_created
                        || (*created == *after_created && id.to_string() < *after_id)
                }
            })
            .collect();
        candidates.sort_by(|a, b| b.cmp(a));
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let mut found = Vec::new();
        for chunk in candidates.chunks(limit.max(1)) {
            let session_keys: Vec<String> = chunk.iter().map(|(_, id)| keys.session(*id)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&session_keys)
                .query_async(&mut *connection)
                .await?;
            for ((_, id), value) in chunk.iter().zip(values) {
                let Some(value) = value else { continue };
                let session = decode(org_id, *id, &value)?;
                if session.is_live(now) && found.len() < limit {
                    found.push(session);
                }
            }
            if found.len() >= limit {
                break;
            }
        }
        Ok(found)
    }

    async fn delete(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let keys = self.keys(org_id);
        let Some(value) = self.get_value(&keys.session(id)).await? else {
            return Ok(None);
        };
        let session = decode(org_id, id, &value)?;
        let mut connection = self.connection().await?;
        let deleted: Option<String> = self
            .delete
            .key(keys.session(id))
            .key(keys.user(session.user_id))
            .key(&keys.exp)
            .key(&keys.act)
            .key(&keys.new)
            .arg(id.hyphenated().to_string())
            .invoke_async(&mut *connection)
            .await?;
        // Another delete may have won between the read and the script.
        Ok(deleted
            .is_some()
            .then_some(session)
            .filter(|session| session.is_live(now)))
    }

    async fn delete_for_user(
        &self,
        org_id: Uuid,
        user_id: Uuid,
        except: Option<Uuid>,
        now: i64,
    ) -> Result<u64, StoreError> {
        let ids: Vec<String> = {
            let mut connection = self.connection().await?;
            redis::cmd("ZRANGE")
                .arg(self.keys(org_id).user(user_id))
                .arg(0)
                .arg(-1)
                .query_async(&mut *connection)
                .await?
        };
        let mut ended = 0;
        for id in ids.iter().filter_map(|id| Uuid::parse_str(id).ok()) {
            if Some(id) != except && self.delete(org_id, id, now).await?.is_some() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    async fn counts(
        &self,
        org_id: Uuid,
        now: i64,
        active_since: i64,
    ) -> Result<SessionCounts, StoreError> {
        let keys = self.keys(org_id);
        let mut connection = self.connection().await?;
        let (total, active, oldest, newest): (i64, i64, String, String) = self
            .counts
            .key(&keys.exp)
            .key(&keys.act)
            .key(&keys.new)
            .arg(now)
            .arg(active_since)
            // Every expired entry: counts must not include them.
            .arg(1_000_000_000_i64)
            .invoke_async(&mut *connection)
            .await?;
        Ok(SessionCounts {
            total,
            active,
            oldest_created_at: oldest.parse().ok(),
            newest_created_at: newest.parse().ok(),
        })
    }

    /// Redis expires sessions itself; their index entries go as the
    /// organization is written and counted.
    async fn sweep_expired(&self, _now: i64, _limit: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn expires_entries_itself(&self) -> bool {
        true
    }
}
