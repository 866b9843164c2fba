//! The durable execution queue's rules, on SQLite and PostgreSQL: one
//! execution per idempotency key, never one execution to two workers,
//! organizations' limits, fair leasing under a backlog, retries with
//! backoff up to ERROR, expired leases reclaimed (a late completion loses),
//! cancellation and deletion; events numbered per organization without
//! gaps, resumable within retention; log lines. Times are given, not read
//! from the clock.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use trellis_execution::store::{
    Appended, Cancelled, Created, Deleted, ExecutionRecord, LeaseAsk, MonthAllowance, Queue,
    Resume, Spec, State,
};
use trellis_store::{Database, Page};
use uuid::Uuid;

const T0: i64 = 1_764_650_000_000;
const LEASE_MS: i64 = 60_000;

fn execution(org: Uuid, queue: &str, at: i64) -> ExecutionRecord {
    ExecutionRecord {
        id: Uuid::new_v4(),
        org_id: org,
        created_by: Uuid::new_v4(),
        queue: queue.into(),
        state: State::Pending,
        attempt: 0,
        max_attempts: 3,
        priority: 0,
        spec: Spec {
            image: "alpine:3".into(),
            command: vec!["true".into()],
            ..Spec::default()
        },
        payload: b"{}".to_vec(),
        output: Vec::new(),
        error: String::new(),
        analysis: String::new(),
        cancel_requested: false,
        idempotency_key: None,
        created_at: at,
        started_at: None,
        finished_at: None,
        next_attempt_at: at,
        lease_id: None,
        lease_expires_at: None,
        updated_at: at,
        system: false,
    }
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn unlimited(_: Uuid) -> i64 {
    1_000
}

/// 5 s doubling, without jitter (the service adds it).
fn backoff(attempt: i64) -> i64 {
    5_000 * 2_i64.pow(u32::try_from(attempt - 1).unwrap_or(0))
}

async fn lease(queue: &Queue, names: &[&str], max: usize, now: i64) -> Vec<ExecutionRecord> {
    let names = queues(names);
    queue
        .lease(
            &LeaseAsk {
                queues: &names,
                max_items: max,
                lease_ms: LEASE_MS,
                now,
            },
            &unlimited,
        )
        .await
        .unwrap()
}

async fn migrated(db: &Database) -> Queue {
    trellis_store::migrate(db, &trellis_execution::MIGRATIONS)
        .await
        .unwrap();
    Queue::new(db.clone(), Arc::new(trellis_store::MemoryFanOut::default()))
}

async fn one_execution_per_idempotency_key(db: &Database) {
    let queue = migrated(db).await;
    let (org, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut first = execution(org, "build", T0);
    first.idempotency_key = Some("order-1".into());
    let Created::New(made) = queue.create(&first).await.unwrap() else {
        panic!("the first is new")
    };
    let mut again = execution(org, "build", T0 + 1);
    again.idempotency_key = Some("order-1".into());
    let Created::Existing(existing) = queue.create(&again).await.unwrap() else {
        panic!("the same key answers the first")
    };
    assert_eq!(existing.id, made.id);
    let mut theirs = execution(other, "build", T0 + 2);
    theirs.idempotency_key = Some("order-1".into());
    assert!(matches!(
        queue.create(&theirs).await.unwrap(),
        Created::New(_)
    ));
    // Keyless executions never collide.
    for n in 0..3 {
        assert!(matches!(
            queue
                .create(&execution(org, "build", T0 + 10 + n))
                .await
                .unwrap(),
            Created::New(_)
        ));
    }
    let listed = queue
        .list(org, None, None, true, &Page::parse(0, "").unwrap())
        .await
        .unwrap();
    assert_eq!(listed.len(), 4);
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
}

backend_suite!(database one_execution_per_idempotency_key, "execution queue": sqlite, postgres);

async fn no_execution_goes_to_two_workers(db: &Database) {
    let queue = Arc::new(migrated(db).await);
    let orgs: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut made = HashSet::new();
    for n in 0..120 {
        let e = execution(orgs[n % 3], "build", T0 + n as i64);
        made.insert(e.id);
        queue.create(&e).await.unwrap();
    }
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let queue = queue.clone();
        workers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = lease(&queue, &["build"], 5, T0 + 1_000).await;
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|e| e.id));
            }
        });
    }
    let mut leased = Vec::new();
    while let Some(done) = workers.join_next().await {
        leased.extend(done.unwrap());
    }
    let distinct: HashSet<Uuid> = leased.iter().copied().collect();
    assert_eq!(leased.len(), distinct.len(), "an execution leased twice");
    assert_eq!(distinct, made, "every execution leased");
}

backend_suite!(database no_execution_goes_to_two_workers, "execution queue": sqlite, postgres);

async fn leases_are_fair_and_keep_to_limits(db: &Database) {
    let queue = migrated(db).await;
    let (flood, small, single) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for n in 0..1_000 {
        queue
            .create(&execution(flood, "build", T0 + n))
            .await
            .unwrap();
    }
    for n in 0..10 {
        queue
            .create(&execution(small, "build", T0 + 2_000 + n))
            .await
            .unwrap();
    }
    for n in 0..5 {
        queue
            .create(&execution(single, "build", T0 + 3_000 + n))
            .await
            .unwrap();
    }
    let limits: HashMap<Uuid, i64> = [(flood, 500), (small, 500), (single, 1)].into();
    let limit_of = |org: Uuid| limits[&org];
    let names = queues(&["build"]);
    let mut rounds_until_small_done = None;
    let mut single_running = 0;
    for round in 1..=20 {
        let got = queue
            .lease(
                &LeaseAsk {
                    queues: &names,
                    max_items: 4,
                    lease_ms: LEASE_MS,
                    now: T0 + 10_000 + round,
                },
                &limit_of,
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 4);
        single_running += got.iter().filter(|e| e.org_id == single).count();
        assert!(single_running <= 1, "max_concurrent_runs = 1 held");
        let small_left = queue
            .list(
                small,
                Some(State::Pending),
                None,
                true,
                &Page::parse(0, "").unwrap(),
            )
            .await
            .unwrap()
            .len();
        if small_left == 0 && rounds_until_small_done.is_none() {
            rounds_until_small_done = Some(round);
        }
    }
    // Ten executions behind a backlog of a thousand: served within a few
    // rounds of four, not after the backlog.
    let rounds = rounds_until_small_done.expect("the small organization was served");
    assert!(rounds <= 8, "took {rounds} rounds");
}

backend_suite!(database leases_are_fair_and_keep_to_limits, "execution queue": sqlite, postgres);

async fn failed_attempts_back_off_then_end_in_error(db: &Database) {
    let queue = migrated(db).await;
    let org = Uuid::new_v4();
    let made = execution(org, "build", T0);
    queue.create(&made).await.unwrap();
    let mut now = T0;
    for attempt in 1..=3 {
        let got = lease(&queue, &["build"], 1, now).await;
        assert_eq!(got.len(), 1, "attempt {attempt} leased at {now}");
        assert_eq!(got[0].attempt, attempt);
        let failed = queue
            .fail(got[0].lease_id.unwrap(), "boom", true, now + 10, &backoff)
            .await
            .unwrap()
            .unwrap();
        if attempt < 3 {
            assert_eq!(failed.state, State::Pending);
            assert_eq!(failed.next_attempt_at, now + 10 + backoff(attempt));
            // Not before its backoff.
            assert!(
                lease(&queue, &["build"], 1, failed.next_attempt_at - 1)
                    .await
                    .is_empty()
            );
            now = failed.next_attempt_at;
        } else {
            assert_eq!(
                (failed.state, failed.error.as_str()),
                (State::Error, "boom")
            );
            assert!(failed.finished_at.is_some());
        }
    }
    // Not retryable: ERROR at once.
    queue.create(&execution(org, "other", T0)).await.unwrap();
    let got = lease(&queue, &["other"], 1, T0).await;
    let failed = queue
        .fail(
            got[0].lease_id.unwrap(),
            "bad input",
            false,
            T0 + 1,
            &backoff,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((failed.state, failed.attempt), (State::Error, 1));
}

backend_suite!(database failed_attempts_back_off_then_end_in_error, "execution queue": sqlite, postgres);

async fn expired_leases_are_reclaimed_and_a_late_worker_loses(db: &Database) {
    let queue = migrated(db).await;
    let org = Uuid::new_v4();
    queue.create(&execution(org, "build", T0)).await.unwrap();
    let first = lease(&queue, &["build"], 1, T0).await.remove(0);
    let stale = first.lease_id.unwrap();
    // A heartbeat extends; past the extended expiry the lease is reclaimed.
    let beat = queue
        .heartbeat(stale, None, T0 + 30_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(beat.lease_expires_at, Some(T0 + 30_000 + LEASE_MS));
    assert_eq!(
        queue
            .reclaim_expired(T0 + 30_000 + LEASE_MS - 1, 100, &backoff)
            .await
            .unwrap(),
        0
    );
    let expired_at = T0 + 30_000 + LEASE_MS;
    assert_eq!(
        queue
            .reclaim_expired(expired_at, 100, &backoff)
            .await
            .unwrap(),
        1
    );
    assert!(
        queue
            .heartbeat(stale, None, expired_at + 1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        queue
            .complete(stale, State::Passed, b"late", "", expired_at + 1)
            .await
            .unwrap()
            .is_none(),
        "the dead worker's late Complete loses"
    );
    let retry_at = expired_at + backoff(1);
    let second = lease(&queue, &["build"], 1, retry_at).await.remove(0);
    assert_eq!((second.id, second.attempt), (first.id, 2));
    let done = queue
        .complete(
            second.lease_id.unwrap(),
            State::Passed,
            b"ok",
            "",
            retry_at + 1,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state, done.output.as_slice()),
        (State::Passed, &b"ok"[..])
    );
    assert!(done.lease_id.is_none());
}

backend_suite!(database expired_leases_are_reclaimed_and_a_late_worker_loses, "execution queue": sqlite, postgres);

async fn cancellation_and_deletion(db: &Database) {
    let queue = migrated(db).await;
    let (org, other) = (Uuid::new_v4(), Uuid::new_v4());
    let pending = execution(org, "build", T0);
    queue.create(&pending).await.unwrap();
    let Cancelled::Now(cancelled) = queue.cancel(org, pending.id, T0 + 1).await.unwrap() else {
        panic!("a pending execution is cancelled at once")
    };
    assert_eq!(cancelled.state, State::Cancelled);
    assert!(matches!(
        queue.cancel(org, pending.id, T0 + 2).await.unwrap(),
        Cancelled::AlreadyFinal(_)
    ));
    assert!(matches!(
        queue.cancel(other, pending.id, T0 + 2).await.unwrap(),
        Cancelled::NotFound
    ));

    let running = execution(org, "build", T0 + 5);
    queue.create(&running).await.unwrap();
    let leased = lease(&queue, &["build"], 1, T0 + 10).await.remove(0);
    assert!(matches!(
        queue.cancel(org, running.id, T0 + 11).await.unwrap(),
        Cancelled::Requested(_)
    ));
    let beat = queue
        .heartbeat(leased.lease_id.unwrap(), None, T0 + 12)
        .await
        .unwrap()
        .unwrap();
    assert!(beat.cancel_requested, "the worker hears of it");
    assert_eq!(
        queue.delete(org, running.id).await.unwrap(),
        Deleted::NotFinal
    );
    // The worker stops: a retryable failure of a cancelled one ends CANCELLED.
    let stopped = queue
        .fail(
            leased.lease_id.unwrap(),
            "cancelled",
            true,
            T0 + 13,
            &backoff,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped.state, State::Cancelled);
    assert_eq!(
        queue.delete(other, running.id).await.unwrap(),
        Deleted::NotFound
    );
    assert_eq!(
        queue.delete(org, running.id).await.unwrap(),
        Deleted::Deleted
    );
    assert!(queue.get(org, running.id).await.unwrap().is_none());
}

backend_suite!(database cancellation_and_deletion, "execution queue": sqlite, postgres);

async fn events_are_numbered_per_organization_and_resumable(db: &Database) {
    let queue = Arc::new(migrated(db).await);
    let (org, other) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(queue.last_event_id(org).await.unwrap(), 0);
    // Racing writers of one organization: ids 1..=n, no gaps, no repeats.
    let mut tasks = Vec::new();
    for n in 0..40 {
        let queue = queue.clone();
        let owner = if n % 4 == 0 { other } else { org };
        tasks.push(tokio::spawn(async move {
            queue
                .create(&execution(owner, "build", T0 + n))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let leased = lease(&queue, &["build"], 5, T0 + 100).await;
    assert_eq!(leased.len(), 5);
    for e in &leased {
        queue
            .complete(e.lease_id.unwrap(), State::Passed, b"big", "", T0 + 200)
            .await
            .unwrap()
            .unwrap();
    }
    let mine = queue.events_after(org, 0, 500).await.unwrap();
    let theirs = queue.events_after(other, 0, 500).await.unwrap();
    assert_eq!(mine.len() + theirs.len(), 40 + 10);
    for events in [&mine, &theirs] {
        let ids: Vec<i64> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    }
    assert!(mine.iter().all(|e| e.execution.org_id == org));
    assert!(theirs.iter().all(|e| e.execution.org_id == other));
    let finished: Vec<_> = mine
        .iter()
        .chain(theirs.iter())
        .filter(|e| e.execution.state == State::Passed)
        .collect();
    assert_eq!(finished.len(), 5);
    assert!(
        finished.iter().all(|e| e.execution.output.is_empty()),
        "events leave output out"
    );
    let last = mine.last().unwrap().event_id;
    assert_eq!(queue.last_event_id(org).await.unwrap(), last);
    assert_eq!(queue.resume(org, 0).await.unwrap(), Resume::From(0));
    assert_eq!(queue.resume(org, last).await.unwrap(), Resume::From(last));
    assert!(matches!(
        queue.resume(org, last + 1).await.unwrap(),
        Resume::OutOfRange { .. }
    ));
    // Past retention: the creations go, resuming from before them is
    // out of range, from after them still fine.
    let pruned = queue.prune_events(T0 + 100, 10_000).await.unwrap();
    assert_eq!(pruned, 40);
    assert!(matches!(
        queue.resume(org, 0).await.unwrap(),
        Resume::OutOfRange { .. }
    ));
    let oldest = queue.events_after(org, 0, 1).await.unwrap()[0].event_id;
    assert_eq!(
        queue.resume(org, oldest - 1).await.unwrap(),
        Resume::From(oldest - 1)
    );
}

backend_suite!(database events_are_numbered_per_organization_and_resumable, "execution queue": sqlite, postgres);

async fn log_lines_need_a_live_lease_and_are_bounded(db: &Database) {
    let queue = migrated(db).await;
    let org = Uuid::new_v4();
    let made = execution(org, "build", T0);
    queue.create(&made).await.unwrap();
    let leased = lease(&queue, &["build"], 1, T0 + 1).await;
    let lease_id = leased[0].lease_id.unwrap();
    let lines: Vec<String> = (1..=3).map(|n| format!("line {n}")).collect();
    assert_eq!(
        queue.append_logs(lease_id, &lines, T0 + 2).await.unwrap(),
        Appended::Through(3)
    );
    assert_eq!(
        queue
            .append_logs(lease_id, &lines[..1], T0 + 3)
            .await
            .unwrap(),
        Appended::Through(4)
    );
    let stored = queue.logs(org, made.id, 0, 500).await.unwrap();
    assert_eq!(
        stored.iter().map(|l| l.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(stored[3].line, "line 1");
    assert!(stored.iter().all(|l| l.attempt == 1));
    assert_eq!(queue.logs(org, made.id, 3, 500).await.unwrap().len(), 1);
    // Another organization sees none of them.
    assert!(
        queue
            .logs(Uuid::new_v4(), made.id, 0, 500)
            .await
            .unwrap()
            .is_empty()
    );
    let too_many = vec!["x".to_string(); 100_000];
    assert_eq!(
        queue
            .append_logs(lease_id, &too_many, T0 + 4)
            .await
            .unwrap(),
        Appended::Full
    );
    // An expired lease writes nothing.
    assert_eq!(
        queue
            .append_logs(lease_id, &lines, T0 + 1 + LEASE_MS)
            .await
            .unwrap(),
        Appended::LeaseNotFound
    );
    queue
        .complete(lease_id, State::Passed, b"", "", T0 + 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(queue.delete(org, made.id).await.unwrap(), Deleted::Deleted);
    assert!(queue.logs(org, made.id, 0, 500).await.unwrap().is_empty());
}

backend_suite!(database log_lines_need_a_live_lease_and_are_bounded, "execution queue": sqlite, postgres);

async fn the_month_allowance_is_exact(db: &Database) {
    let queue = Arc::new(migrated(db).await);
    let org = Uuid::new_v4();
    // One made before the allowance was first asked about counts too.
    queue.create(&execution(org, "build", T0)).await.unwrap();
    let allowance = Some(MonthAllowance {
        month_start: T0 - 1000,
        limit: 5,
    });
    let mut tasks = Vec::new();
    for n in 0..10 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            queue
                .create_within(&execution(org, "build", T0 + 1 + n), allowance)
                .await
                .unwrap()
        }));
    }
    let mut made = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), Created::New(_)) {
            made += 1;
        }
    }
    assert_eq!(made, 4, "racing creates never pass the allowance");
    // The platform's own are outside it; a new month starts afresh.
    let mut system = execution(org, "build", T0 + 50);
    system.system = true;
    assert!(matches!(
        queue.create(&system).await.unwrap(),
        Created::New(_)
    ));
    let next_month = Some(MonthAllowance {
        month_start: T0 + 100,
        limit: 5,
    });
    assert!(matches!(
        queue
            .create_within(&execution(org, "build", T0 + 200), next_month)
            .await
            .unwrap(),
        Created::New(_)
    ));
}

backend_suite!(database the_month_allowance_is_exact, "execution queue": sqlite, postgres);
