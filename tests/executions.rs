//! The Execution server end to end with worker tokens, on SQLite and
//! PostgreSQL: the worker protocol (lease, heartbeat, logs, complete,
//! fail), WatchExecutions per organization with resume_after, StreamLogs
//! with follow, max_concurrent_runs under many racing workers, and 1 000
//! executions through workers that die mid-execution or answer after their
//! lease expired: every execution completes exactly once.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use trellis::auth::v1::IssueServiceTokenRequest;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::execution::v1 as pb;
use trellis::execution::v1::execution_service_client::ExecutionServiceClient;
use trellis::execution::v1::worker_service_client::WorkerServiceClient;
use trellis_auth::service_accounts::{self, ServiceScope};
use trellis_cli::{Running, ServiceName};
use trellis_store::{Database, DatabaseOptions, with_pool};

struct Fixture {
    running: Running,
    data_dir: std::path::PathBuf,
    auth_database: Database,
    auth: AuthServiceClient<Channel>,
    executions: ExecutionServiceClient<Channel>,
    workers: WorkerServiceClient<Channel>,
}

/// An organization's admin token and id.
#[derive(Clone)]
struct Member {
    token: String,
    org_id: String,
}

impl Fixture {
    async fn start(flags: &[&str]) -> Fixture {
        let data_dir = temp_dir("executions");
        let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, flags))
            .await
            .unwrap();
        let url = match flags.iter().position(|flag| *flag == "--database-url") {
            Some(at) => flags[at + 1].to_owned(),
            None => trellis_store::default_sqlite_url(&data_dir, "auth"),
        };
        let auth_database = Database::connect(&url, &DatabaseOptions::default())
            .await
            .unwrap();
        let at = |service| running.address(service).unwrap();
        let execution_channel = channel(at(ServiceName::Execution)).await;
        Fixture {
            auth: AuthServiceClient::new(channel(at(ServiceName::Auth)).await),
            executions: ExecutionServiceClient::new(execution_channel.clone()),
            workers: WorkerServiceClient::new(execution_channel),
            running,
            data_dir,
            auth_database,
        }
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        std::fs::remove_dir_all(self.data_dir).unwrap();
    }

    async fn sign_up(&mut self, name: &str) -> Member {
        let signed_up = sign_up(&mut self.auth, name).await;
        Member {
            token: signed_up.access_token,
            org_id: signed_up.organization.unwrap().organization_id,
        }
    }

    /// What an operator's plan change does: Auth's row; the Execution
    /// server hears of it within its limits cache TTL (a new organization
    /// has not been asked about yet).
    async fn set_limits(&self, who: &Member, concurrent: i64, per_month: i64) {
        with_pool!(&self.auth_database, |pool| {
            sqlx::query(
                "UPDATE auth_organizations SET plan = 'enterprise', max_concurrent_runs = $1, \
                 max_runs_per_month = $2 WHERE id = $3",
            )
            .bind(concurrent)
            .bind(per_month)
            .bind(&who.org_id)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected()
        });
    }

    async fn worker_token(&mut self) -> String {
        let credentials =
            service_accounts::create(&self.auth_database, "test-worker", ServiceScope::Worker)
                .await
                .unwrap();
        self.auth
            .issue_service_token(IssueServiceTokenRequest {
                client_id: credentials.client_id,
                client_secret: credentials.client_secret,
            })
            .await
            .unwrap()
            .into_inner()
            .access_token
    }

    async fn create(&mut self, who: &Member, queue: &str) -> pb::Execution {
        self.create_with_attempts(who, queue, 3).await
    }

    async fn create_with_attempts(
        &mut self,
        who: &Member,
        queue: &str,
        max_attempts: i32,
    ) -> pb::Execution {
        self.executions
            .create_execution(authed(
                pb::CreateExecutionRequest {
                    queue: queue.into(),
                    image: "alpine:3".into(),
                    command: vec!["true".into()],
                    max_attempts,
                    ..Default::default()
                },
                &who.token,
            ))
            .await
            .unwrap()
            .into_inner()
            .execution
            .unwrap()
    }
}

async fn lease(
    workers: &mut WorkerServiceClient<Channel>,
    token: &str,
    queue: &str,
    max_items: i32,
    lease_seconds: i32,
) -> Vec<pb::LeasedExecution> {
    workers
        .lease(authed(
            pb::LeaseRequest {
                queues: vec![queue.into()],
                max_items,
                lease_seconds,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .leases
}

async fn complete(
    workers: &mut WorkerServiceClient<Channel>,
    token: &str,
    lease_id: &str,
) -> Result<pb::Execution, tonic::Status> {
    workers
        .complete(authed(
            pb::CompleteRequest {
                lease_id: lease_id.into(),
                status: pb::ExecutionStatus::Passed as i32,
                output: b"ok".to_vec(),
                analysis: String::new(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().execution.unwrap())
}

async fn next_event(
    stream: &mut tonic::Streaming<pb::WatchExecutionsResponse>,
) -> pb::ExecutionEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event in time")
        .unwrap()
        .expect("the stream stays open")
        .event
        .unwrap()
}

async fn watch(
    executions: &mut ExecutionServiceClient<Channel>,
    who: &Member,
    resume_after: Option<i64>,
) -> Result<tonic::Streaming<pb::WatchExecutionsResponse>, tonic::Status> {
    executions
        .watch_executions(authed(
            pb::WatchExecutionsRequest {
                resume_after,
                ..Default::default()
            },
            &who.token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn workers_logs_and_watching(flags: &[&str]) {
    let mut f = Fixture::start(flags).await;
    let worker = f.worker_token().await;
    let ana = f.sign_up("ana").await;
    let bea = f.sign_up("bea").await;
    let mut ana_watch = watch(&mut f.executions, &ana, None).await.unwrap();
    let mut bea_watch = watch(&mut f.executions, &bea, None).await.unwrap();

    // A user cannot lease; a worker cannot create.
    let refused = f
        .workers
        .lease(authed(
            pb::LeaseRequest {
                queues: vec!["build".into()],
                max_items: 1,
                lease_seconds: 0,
            },
            &ana.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let made = f.create(&ana, "build").await;
    let theirs = f.create(&bea, "build").await;
    let created = next_event(&mut ana_watch).await;
    assert_eq!(created.event_id, 1);
    let execution = created.execution.unwrap();
    assert_eq!(execution.execution_id, made.execution_id);
    assert_eq!(execution.status(), pb::ExecutionStatus::Pending);
    let bea_created = next_event(&mut bea_watch).await;
    assert_eq!(
        bea_created.execution.unwrap().execution_id,
        theirs.execution_id
    );

    // Logs followed live, from a stream opened before the first line.
    let mut logs = f
        .executions
        .stream_logs(authed(
            pb::StreamLogsRequest {
                execution_id: made.execution_id.clone(),
                follow: true,
                after_sequence: 0,
            },
            &ana.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let leased = lease(&mut f.workers, &worker, "build", 10, 30).await;
    assert_eq!(leased.len(), 2, "one of each organization");
    let mine = leased
        .iter()
        .find(|l| l.organization_id == ana.org_id)
        .unwrap()
        .clone();
    let running = next_event(&mut ana_watch).await;
    assert_eq!(running.event_id, 2);
    assert_eq!(
        running.execution.unwrap().status(),
        pb::ExecutionStatus::Running
    );
    let appended = f
        .workers
        .append_logs(authed(
            pb::AppendLogsRequest {
                lease_id: mine.lease_id.clone(),
                lines: vec!["compiling".into(), "\u{1b}[31mred\u{1b}[0m".into()],
            },
            &worker,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(appended.last_sequence, 2);
    let first = tokio::time::timeout(Duration::from_secs(10), logs.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let lines: Vec<&str> = first.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(lines, ["compiling", "\u{fffd}[31mred\u{fffd}[0m"]);
    // Heartbeat extends; a cancel request is reported.
    f.executions
        .cancel_execution(authed(
            pb::CancelExecutionRequest {
                execution_id: made.execution_id.clone(),
            },
            &ana.token,
        ))
        .await
        .unwrap();
    let beat = f
        .workers
        .heartbeat(authed(
            pb::HeartbeatRequest {
                lease_id: mine.lease_id.clone(),
                lease_seconds: 0,
            },
            &worker,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(beat.cancel_requested);
    let cancelled = f
        .workers
        .fail(authed(
            pb::FailRequest {
                lease_id: mine.lease_id.clone(),
                error: "cancelled".into(),
                retryable: true,
            },
            &worker,
        ))
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(cancelled.status(), pb::ExecutionStatus::Cancelled);
    // The log stream ends once the execution is final.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while logs.message().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "StreamLogs ends with the execution");
    // A lease that ended is not found.
    let gone = f
        .workers
        .append_logs(authed(
            pb::AppendLogsRequest {
                lease_id: mine.lease_id.clone(),
                lines: vec!["late".into()],
            },
            &worker,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Events so far: created, running, cancel requested, cancelled.
    let mut last = 2;
    for _ in 0..2 {
        let event = next_event(&mut ana_watch).await;
        assert_eq!(event.event_id, last + 1);
        last = event.event_id;
    }
    // Bea's stream holds only bea's.
    let bea_running = next_event(&mut bea_watch).await;
    assert_eq!(bea_running.execution.unwrap().organization_id, bea.org_id);

    // Cut, changes happen, resumed: exactly the missed ones, in order.
    drop(ana_watch);
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(f.create(&ana, "build").await.execution_id);
    }
    let mut resumed = watch(&mut f.executions, &ana, Some(last)).await.unwrap();
    for (n, id) in missed.iter().enumerate() {
        let event = next_event(&mut resumed).await;
        assert_eq!(event.event_id, last + 1 + n as i64);
        assert_eq!(&event.execution.unwrap().execution_id, id);
    }
    // Then live ones, no duplicate.
    let live = f.create(&ana, "build").await;
    let event = next_event(&mut resumed).await;
    assert_eq!(event.event_id, last + 4);
    assert_eq!(event.execution.unwrap().execution_id, live.execution_id);
    // An id never handed out: OUT_OF_RANGE.
    let future = watch(&mut f.executions, &ana, Some(last + 100))
        .await
        .unwrap_err();
    assert_eq!(future.code(), Code::OutOfRange);
    // Another organization's execution: not found, logs included.
    let hidden = f
        .executions
        .stream_logs(authed(
            pb::StreamLogsRequest {
                execution_id: made.execution_id.clone(),
                follow: false,
                after_sequence: 0,
            },
            &bea.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    f.stop().await;
}

backend_suite!(workers_logs_and_watching, "executions": sqlite, postgres);

async fn concurrency_limit_holds_under_racing_workers(flags: &[&str]) {
    let mut f = Fixture::start(flags).await;
    let worker = f.worker_token().await;
    // A new organization is on the free plan: one run at a time.
    let ana = f.sign_up("ana").await;
    for _ in 0..20 {
        f.create(&ana, "build").await;
    }
    let running = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (running, most, done) = (running.clone(), most.clone(), done.clone());
        let mut workers = f.workers.clone();
        let worker = worker.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while done.load(Ordering::SeqCst) < 20 && tokio::time::Instant::now() < deadline {
                for leased in lease(&mut workers, &worker, "build", 5, 30).await {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    complete(&mut workers, &worker, &leased.lease_id)
                        .await
                        .unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 20);
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two at once");
    f.stop().await;
}

backend_suite!(concurrency_limit_holds_under_racing_workers, "executions": sqlite, postgres);

/// 1 000 executions of 10 organizations, 8 workers; one lease in 20 is
/// dropped (its worker died) and one in 20 is completed after its lease
/// expired. Effects are the Completes the server accepted: one each.
async fn dying_workers_lose_nothing_and_repeat_nothing(flags: &[&str]) {
    let mut f = Fixture::start(flags).await;
    let worker = f.worker_token().await;
    let mut made = Vec::new();
    for n in 0..10 {
        let org = f.sign_up(&format!("org{n}")).await;
        f.set_limits(&org, 5, 1_000).await;
        for _ in 0..100 {
            // Enough attempts that bad luck never ends one in ERROR.
            made.push(f.create_with_attempts(&org, "batch", 10).await.execution_id);
        }
    }
    let effects: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let late_refused = Arc::new(AtomicI64::new(0));
    let dropped = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for w in 0..8_u64 {
        let (effects, late_refused, dropped) =
            (effects.clone(), late_refused.clone(), dropped.clone());
        let mut workers = f.workers.clone();
        let worker = worker.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut n = w;
            while effects.lock().unwrap().len() < 1000 && tokio::time::Instant::now() < deadline {
                let leased = lease(&mut workers, &worker, "batch", 10, 5).await;
                if leased.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                for one in leased {
                    n += 7;
                    match n % 20 {
                        // Died: never heard of again.
                        0 => {
                            dropped.fetch_add(1, Ordering::SeqCst);
                        }
                        // Stalled past its lease, then answers.
                        1 => {
                            let mut workers = workers.clone();
                            let worker = worker.clone();
                            let (effects, late_refused) = (effects.clone(), late_refused.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(6500)).await;
                                match complete(&mut workers, &worker, &one.lease_id).await {
                                    Ok(done) => {
                                        *effects
                                            .lock()
                                            .unwrap()
                                            .entry(done.execution_id)
                                            .or_default() += 1;
                                    }
                                    Err(status) => {
                                        assert_eq!(status.code(), Code::NotFound);
                                        late_refused.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            });
                        }
                        _ => {
                            let done = complete(&mut workers, &worker, &one.lease_id)
                                .await
                                .unwrap();
                            *effects
                                .lock()
                                .unwrap()
                                .entry(done.execution_id)
                                .or_default() += 1;
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let effects = effects.lock().unwrap().clone();
    assert_eq!(effects.len(), 1000, "every execution completed");
    assert!(effects.values().all(|&n| n == 1), "none twice");
    assert!(made.iter().all(|id| effects.contains_key(id)));
    assert!(dropped.load(Ordering::SeqCst) > 0);
    println!(
        "1000 executions: {} leases dropped, {} late completions refused",
        dropped.load(Ordering::SeqCst),
        late_refused.load(Ordering::SeqCst)
    );
    f.stop().await;
}

backend_suite!(dying_workers_lose_nothing_and_repeat_nothing, "executions": sqlite, postgres);
