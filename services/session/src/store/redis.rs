//! [`SessionStore`] in Redis: each session one compact binary string with
//! a TTL, plus
//! per-organization sorted sets (by expiry, last activity and creation) for
//! counts and per-user sets for listing. An organization's keys share one
//! hash tag, so every script touches one cluster slot. Index entries of
//! expired sessions are pruned as the organization is written and read.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::Script;
use trellis_store::{Page, RedisPool, StoreError};
use uuid::Uuid;

use super::{SessionCounts, SessionKind, SessionRecord, SessionStore};

/// Expired index entries removed per write, so pruning never stalls Redis.
const PRUNE_PER_WRITE: i64 = 100;
/// ... and per count: the live total is exact regardless (it counts by
/// expiry); the active count and oldest/newest are exact while an
/// organization's expired backlog is below this.
const PRUNE_PER_COUNT: i64 = 10_000;

/// The layout of a stored value; a value of another version is refused as
/// corrupt rather than misread.
const VALUE_VERSION: u8 = 1;

/// Ids in keys and index members: 22 characters of base64url, not 36.
fn short(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn from_short(text: &str) -> Option<Uuid> {
    let bytes: [u8; 16] = URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()?;
    Some(Uuid::from_bytes(bytes))
}

/// A session as stored, in a compact binary layout (the key holds its own
/// and its organization's id): version, user id, kind, the four times,
/// then length-prefixed CSRF token, user agent, address and metadata.
/// Every length is bounded before it gets here (metadata and user agent
/// by the service), so the prefixes never overflow.
fn encode(session: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(128 + session.user_agent.len());
    out.push(VALUE_VERSION);
    out.extend_from_slice(session.user_id.as_bytes());
    out.push(match session.kind {
        SessionKind::Login => b'l',
        SessionKind::Work => b'w',
    });
    for time in [
        session.created_at,
        session.last_activity_at,
        session.idle_expires_at,
        session.absolute_expires_at,
    ] {
        out.extend_from_slice(&time.to_le_bytes());
    }
    for value in [
        &session.csrf_token,
        &session.user_agent,
        &session.client_address,
    ] {
        put_text(&mut out, value)?;
    }
    let entries = u16::try_from(session.metadata.len()).map_err(|_| corrupt("metadata"))?;
    out.extend_from_slice(&entries.to_le_bytes());
    for (key, value) in &session.metadata {
        put_text(&mut out, key)?;
        put_text(&mut out, value)?;
    }
    Ok(out)
}

fn put_text(out: &mut Vec<u8>, value: &str) -> Result<(), StoreError> {
    let length = u16::try_from(value.len()).map_err(|_| corrupt("session field too long"))?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

/// Reads what [`encode`] wrote.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("truncated session"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn text(&mut self) -> Result<String, StoreError> {
        let length = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
        String::from_utf8(self.take(usize::from(length))?.to_vec())
            .map_err(|_| corrupt("session text is not UTF-8"))
    }
}

fn decode(org_id: Uuid, id: Uuid, value: &[u8]) -> Result<SessionRecord, StoreError> {
    let mut reader = Reader(value);
    if reader.take(1)? != [VALUE_VERSION] {
        return Err(corrupt("unknown session layout"));
    }
    let user_id = Uuid::from_bytes(reader.take(16)?.try_into().expect("16 bytes"));
    let kind = match reader.take(1)? {
        b"l" => SessionKind::Login,
        b"w" => SessionKind::Work,
        _ => return Err(corrupt("unknown session kind")),
    };
    let (created_at, last_activity_at, idle_expires_at, absolute_expires_at) =
        (reader.i64()?, reader.i64()?, reader.i64()?, reader.i64()?);
    let csrf_token = reader.text()?;
    let user_agent = reader.text()?;
    let client_address = reader.text()?;
    let entries = u16::from_le_bytes(reader.take(2)?.try_into().expect("2 bytes"));
    let mut metadata = BTreeMap::new();
    for _ in 0..entries {
        let key = reader.text()?;
        metadata.insert(key, reader.text()?);
    }
    Ok(SessionRecord {
        id,
        org_id,
        user_id,
        kind,
        created_at,
        last_activity_at,
        idle_expires_at,
        absolute_expires_at,
        metadata,
        csrf_token,
        user_agent,
        client_address,
    })
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unreadable session",
        what.to_owned(),
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
  if redis.call('EXISTS', string.sub(KEYS[1], 1, -23) .. id) == 0 then
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
        format!("{}{}", self.session_base, short(id))
    }

    fn user(&self, user_id: Uuid) -> String {
        format!("{}{}", self.user_base, short(user_id))
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
        let base = format!("{}sess:{{{}}}:", self.prefix, short(org_id));
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

    async fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
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
            .arg(short(session.id))
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
            .arg(short(id))
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
            .filter_map(|(id, created)| Some((created, from_short(&id)?)))
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
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
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
        let deleted: Option<Vec<u8>> = self
            .delete
            .key(keys.session(id))
            .key(keys.user(session.user_id))
            .key(&keys.exp)
            .key(&keys.act)
            .key(&keys.new)
            .arg(short(id))
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
        for id in ids.iter().filter_map(|id| from_short(id)) {
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
            // Counts must not include expired entries; bounded, so one
            // call never blocks Redis for long (writes prune too).
            .arg(PRUNE_PER_COUNT)
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
