//! The session store's rules, run against every backend: liveness by both
//! expiries, sliding activity written at most once a minute, the absolute
//! cap, per-organization scoping, paging, deletion and counts.

mod common;

use std::collections::BTreeMap;

use trellis_session::store::{
    ACTIVITY_WRITE_INTERVAL_MS, RedisSessions, SessionKind, SessionRecord, SessionStore,
    SqlSessions,
};
use trellis_store::Page;
use uuid::Uuid;

const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;
/// Some time in 2026, Unix ms.
const T0: i64 = 1_790_000_000_000;

/// One test per backend for a scenario over `&dyn SessionStore`: SQLite
/// and PostgreSQL (a database of the test's own, migrated) and Redis (keys
/// under a prefix of the test's own, removed after).
macro_rules! store_suite {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            async fn in_sql(backend: common::Backend) {
                let Some(test) = common::TestDatabase::fresh(backend, "session store").await else {
                    return;
                };
                trellis_store::migrate(&test.database, &trellis_session::MIGRATIONS)
                    .await
                    .unwrap();
                super::$scenario(&SqlSessions::new(test.database.clone())).await;
                test.remove().await;
            }

            #[tokio::test]
            async fn sqlite() {
                in_sql(common::Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                in_sql(common::Backend::Postgres).await;
            }

            #[tokio::test]
            async fn redis() {
                let Some(url) = common::redis_url("session store") else {
                    return;
                };
                let pool = trellis_store::connect_redis(&url, 4).await.unwrap();
                let prefix = format!("trellis-test:{}:", Uuid::new_v4().simple());
                super::$scenario(&RedisSessions::new(pool.clone(), prefix.clone())).await;
                trellis_store::remove_keys_under(&pool, &prefix)
                    .await
                    .unwrap();
            }
        }
    };
}

fn session(org_id: Uuid, user_id: Uuid, created_at: i64) -> SessionRecord {
    SessionRecord {
        id: Uuid::new_v4(),
        org_id,
        user_id,
        kind: SessionKind::Work,
        created_at,
        last_activity_at: created_at,
        idle_expires_at: created_at + 24 * HOUR,
        absolute_expires_at: created_at + 72 * HOUR,
        metadata: BTreeMap::from([("table".to_owned(), "7".to_owned())]),
        csrf_token: "csrf-token".into(),
        user_agent: "test/1".into(),
        client_address: "10.0.0.1".into(),
    }
}

async fn sessions_live_until_either_expiry_and_only_in_their_organization(
    store: &dyn SessionStore,
) {
    let (org, other_org, user) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let opened = session(org, user, T0);
    store.insert(&opened).await.unwrap();
    assert_eq!(
        store.get(org, opened.id, T0 + 1).await.unwrap(),
        Some(opened.clone())
    );
    // Another organization's id space: not found, however it is asked.
    assert_eq!(store.get(other_org, opened.id, T0 + 1).await.unwrap(), None);
    assert_eq!(
        store
            .touch(other_org, opened.id, T0 + HOUR, 24 * HOUR)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.delete(other_org, opened.id, T0 + 1).await.unwrap(),
        None
    );
    assert!(
        store.get(org, opened.id, T0 + 1).await.unwrap().is_some(),
        "still there"
    );
    // Idle expiry.
    assert_eq!(
        store.get(org, opened.id, T0 + 24 * HOUR).await.unwrap(),
        None
    );
    // The absolute cap holds however active it is.
    for hours in [12, 24, 36, 48, 60, 71] {
        let now = T0 + hours * HOUR;
        let touched = store.touch(org, opened.id, now, 24 * HOUR).await.unwrap();
        let touched = touched.unwrap_or_else(|| panic!("not live at +{hours} h"));
        assert_eq!(touched.expires_at(), (now + 24 * HOUR).min(T0 + 72 * HOUR));
    }
    assert_eq!(
        store.get(org, opened.id, T0 + 72 * HOUR).await.unwrap(),
        None
    );
}

store_suite!(sessions_live_until_either_expiry_and_only_in_their_organization);

async fn activity_slides_expiry_but_is_written_at_most_once_a_minute(store: &dyn SessionStore) {
    let (org, user) = (Uuid::new_v4(), Uuid::new_v4());
    let opened = session(org, user, T0);
    store.insert(&opened).await.unwrap();
    let idle = 24 * HOUR;
    // Within the minute: answered, not written.
    let soon = store
        .touch(org, opened.id, T0 + 30_000, idle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(soon.last_activity_at, T0);
    let stored = store
        .get(org, opened.id, T0 + 30_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.idle_expires_at, T0 + idle);
    // After it: written, and the expiry slides from then.
    let later = T0 + ACTIVITY_WRITE_INTERVAL_MS + 1;
    let touched = store
        .touch(org, opened.id, later, idle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (touched.last_activity_at, touched.idle_expires_at),
        (later, later + idle)
    );
    assert_eq!(
        store.get(org, opened.id, later).await.unwrap(),
        Some(touched)
    );
    assert!(
        store
            .get(org, opened.id, T0 + idle + MINUTE)
            .await
            .unwrap()
            .is_some()
    );
}

store_suite!(activity_slides_expiry_but_is_written_at_most_once_a_minute);

async fn a_users_sessions_page_newest_first_and_end_together(store: &dyn SessionStore) {
    let (org, ana, bea) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut anas = Vec::new();
    for n in 0..5 {
        let opened = session(org, ana, T0 + n * MINUTE);
        store.insert(&opened).await.unwrap();
        anas.push(opened.id);
    }
    let expired = session(org, ana, T0 - 30 * HOUR);
    store.insert(&expired).await.unwrap();
    store.insert(&session(org, bea, T0)).await.unwrap();
    store
        .insert(&session(Uuid::new_v4(), ana, T0))
        .await
        .unwrap();

    let now = T0 + HOUR;
    let mut page = Page::parse(2, "").unwrap();
    let mut listed = Vec::new();
    loop {
        let rows = store.list_for_user(org, ana, now, &page).await.unwrap();
        listed.extend(rows.iter().map(|s| s.id));
        let Some(last) = rows.last().filter(|_| rows.len() == 2) else {
            break;
        };
        page.after = Some((last.created_at, last.id.to_string()));
    }
    anas.reverse();
    assert_eq!(listed, anas, "newest first, live only, Ana's only");

    // All but one end; Bea's stay.
    let kept = anas[0];
    assert_eq!(
        store
            .delete_for_user(org, ana, Some(kept), now)
            .await
            .unwrap(),
        4
    );
    let left = store
        .list_for_user(org, ana, now, &Page::parse(0, "").unwrap())
        .await
        .unwrap();
    assert_eq!(left.iter().map(|s| s.id).collect::<Vec<_>>(), vec![kept]);
    assert_eq!(
        store
            .list_for_user(org, bea, now, &Page::parse(0, "").unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
    // Ending one answers it once.
    assert_eq!(
        store.delete(org, kept, now).await.unwrap().map(|s| s.id),
        Some(kept)
    );
    assert_eq!(store.delete(org, kept, now).await.unwrap(), None);
}

store_suite!(a_users_sessions_page_newest_first_and_end_together);

async fn counts_cover_live_sessions_of_one_organization(store: &dyn SessionStore) {
    let (org, other_org) = (Uuid::new_v4(), Uuid::new_v4());
    let now = T0 + 2 * HOUR;
    let quiet = session(org, Uuid::new_v4(), T0);
    let busy = session(org, Uuid::new_v4(), T0 + HOUR);
    for opened in [&quiet, &busy] {
        store.insert(opened).await.unwrap();
    }
    store
        .touch(org, busy.id, now - 5 * MINUTE, 24 * HOUR)
        .await
        .unwrap();
    store
        .insert(&session(org, Uuid::new_v4(), T0 - 30 * HOUR))
        .await
        .unwrap();
    store
        .insert(&session(other_org, Uuid::new_v4(), T0))
        .await
        .unwrap();

    let counts = store.counts(org, now, now - 15 * MINUTE).await.unwrap();
    assert_eq!((counts.total, counts.active), (2, 1));
    assert_eq!(
        (counts.oldest_created_at, counts.newest_created_at),
        (Some(T0), Some(T0 + HOUR))
    );
    let empty = store.counts(Uuid::new_v4(), now, now).await.unwrap();
    assert_eq!((empty.total, empty.oldest_created_at), (0, None));

    // The sweeper takes the expired one, unless the backend expires its own.
    let expired = if store.expires_entries_itself() { 0 } else { 1 };
    assert_eq!(store.sweep_expired(now, 10).await.unwrap(), expired);
    assert_eq!(store.sweep_expired(now, 10).await.unwrap(), 0);
    assert_eq!(store.counts(org, now, 0).await.unwrap().total, 2);
}

store_suite!(counts_cover_live_sessions_of_one_organization);

async fn a_touch_never_brings_back_an_ended_session(store: &dyn SessionStore) {
    let (org, user) = (Uuid::new_v4(), Uuid::new_v4());
    let opened = session(org, user, T0);
    store.insert(&opened).await.unwrap();
    assert!(
        store
            .delete(org, opened.id, T0 + 1)
            .await
            .unwrap()
            .is_some()
    );
    let later = T0 + 2 * ACTIVITY_WRITE_INTERVAL_MS;
    assert_eq!(
        store.touch(org, opened.id, later, 24 * HOUR).await.unwrap(),
        None
    );
    assert_eq!(store.get(org, opened.id, later).await.unwrap(), None);
    assert_eq!(store.counts(org, later, 0).await.unwrap().total, 0);
}

store_suite!(a_touch_never_brings_back_an_ended_session);

/// Redis keeps index entries beside each session; those of expired sessions
/// are pruned as the organization is written, so they do not pile up.
#[tokio::test]
async fn redis_indexes_do_not_keep_expired_sessions() {
    let Some(url) = common::redis_url("session store") else {
        return;
    };
    let pool = trellis_store::connect_redis(&url, 4).await.unwrap();
    let prefix = format!("trellis-test:{}:", Uuid::new_v4().simple());
    let store = RedisSessions::new(pool.clone(), prefix.clone());
    let org = Uuid::new_v4();
    for n in 0..150 {
        // Each lives an hour; the next day's sessions find them expired.
        let mut short = session(org, Uuid::new_v4(), T0 + n);
        short.idle_expires_at = short.created_at + HOUR;
        store.insert(&short).await.unwrap();
    }
    let next_day = T0 + 24 * HOUR;
    store
        .insert(&session(org, Uuid::new_v4(), next_day))
        .await
        .unwrap();
    store
        .insert(&session(org, Uuid::new_v4(), next_day + 1))
        .await
        .unwrap();
    let mut connection = pool.get().await.unwrap();
    // Ids in keys are 22 characters of base64url.
    let org_key = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(org.as_bytes())
    };
    let key = format!("{prefix}sess:{{{org_key}}}:exp");
    let indexed: i64 = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut *connection)
        .await
        .unwrap();
    // 100 pruned per write: two writes took all 150 expired.
    assert_eq!(indexed, 2, "{key}");
    drop(connection);
    trellis_store::remove_keys_under(&pool, &prefix)
        .await
        .unwrap();
}
