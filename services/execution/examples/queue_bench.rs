//! Load client of `bench/queue.sh`, against a running `trellis serve auth
//! session execution`. Outcomes and times are read back from the Execution
//! server's own rows (status, created_at, started_at), not counted here.
//!
//! ```text
//! queue_bench <auth_url> <execution_url> <auth_db_url> <execution_db_url> \
//!             <worker_client_id> <worker_client_secret> <executions> <seconds>
//! ```
//!
//! 1. max: 4 producers create `executions` while 4 workers lease (10 at a
//!    time) and complete them: executions per second, create to complete.
//! 2. half: producers create at half that rate for `seconds`, workers
//!    polling every 5 ms when idle: p50/p99 of started_at - created_at.
//! 3. raw: the same shape as plain SQL on the same database, 4 producers
//!    inserting and 4 clients claiming (FOR UPDATE SKIP LOCKED on
//!    PostgreSQL) and completing one row at a time.
//! 4. fairness: one organization holds 10 000 pending, another submits 10;
//!    lease calls of one item until all 10 of the second are leased.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::transport::Channel;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{IssueServiceTokenRequest, SignUpRequest};
use trellis::execution::v1 as pb;
use trellis::execution::v1::execution_service_client::ExecutionServiceClient;
use trellis::execution::v1::worker_service_client::WorkerServiceClient;
use trellis_store::{Database, DatabaseOptions, with_pool};

fn fail(message: &str) -> ! {
    eprintln!("queue_bench: {message}");
    std::process::exit(1)
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    request
}

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap_or_else(|e| fail(&format!("url {url:?}: {e}")))
        .connect()
        .await
        .unwrap_or_else(|e| fail(&format!("cannot connect to {url}: {e}")))
}

struct Org {
    id: String,
    token: String,
}

async fn sign_up(auth: &mut AuthServiceClient<Channel>, db: &Database, tag: &str) -> Org {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let answer = auth
        .sign_up(SignUpRequest {
            email: format!("bench.{tag}.{unique}@example.com"),
            password: "Correct-Horse-9".into(),
            name: tag.into(),
            organization_name: format!("bench {tag} {unique}"),
        })
        .await
        .unwrap_or_else(|s| fail(&format!("sign-up: {s}")))
        .into_inner();
    let id = answer
        .organization
        .expect("an organization")
        .organization_id;
    // A plan without limits that matter here (what an operator's plan
    // change writes).
    with_pool!(db, |pool| {
        sqlx::query(
            "UPDATE auth_organizations SET plan = 'enterprise', max_concurrent_runs = 100000, \
             max_runs_per_month = 100000000 WHERE id = $1",
        )
        .bind(&id)
        .execute(pool)
        .await
        .unwrap_or_else(|e| fail(&format!("setting limits: {e}")))
        .rows_affected()
    });
    Org {
        id,
        token: answer.access_token,
    }
}

async fn create(executions: &mut ExecutionServiceClient<Channel>, org: &Org, queue: &str) {
    executions
        .create_execution(authed(
            pb::CreateExecutionRequest {
                queue: queue.into(),
                image: "bench".into(),
                command: vec!["true".into()],
                ..Default::default()
            },
            &org.token,
        ))
        .await
        .unwrap_or_else(|s| fail(&format!("create: {s}")));
}

/// Leases up to `items` and completes them; how many.
async fn lease_and_complete(
    workers: &mut WorkerServiceClient<Channel>,
    token: &str,
    queue: &str,
    items: i32,
) -> Vec<String> {
    let leases = workers
        .lease(authed(
            pb::LeaseRequest {
                queues: vec![queue.into()],
                max_items: items,
                lease_seconds: 60,
            },
            token,
        ))
        .await
        .unwrap_or_else(|s| fail(&format!("lease: {s}")))
        .into_inner()
        .leases;
    let mut orgs = Vec::with_capacity(leases.len());
    for leased in leases {
        workers
            .complete(authed(
                pb::CompleteRequest {
                    lease_id: leased.lease_id,
                    status: pb::ExecutionStatus::Passed as i32,
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap_or_else(|s| fail(&format!("complete: {s}")));
        orgs.push(leased.organization_id);
    }
    orgs
}

/// Runs 4 workers on `queue` until `done` says stop; idle ones wait `idle`.
fn spawn_workers(
    tasks: &mut JoinSet<()>,
    workers: &WorkerServiceClient<Channel>,
    token: &str,
    queue: &'static str,
    idle: Duration,
    done: Arc<AtomicUsize>,
    target: usize,
) {
    for _ in 0..4 {
        let (mut workers, token, done) = (workers.clone(), token.to_owned(), done.clone());
        tasks.spawn(async move {
            while done.load(Ordering::SeqCst) < target {
                let n = lease_and_complete(&mut workers, &token, queue, 10)
                    .await
                    .len();
                if n == 0 {
                    tokio::time::sleep(idle).await;
                }
                done.fetch_add(n, Ordering::SeqCst);
            }
        });
    }
}

async fn count(db: &Database, org: &Org, queue: &str, status: &str) -> i64 {
    let (n,): (i64,) = with_pool!(db, |pool| {
        sqlx::query_as(
            "SELECT COUNT(*) FROM execution_executions WHERE org_id = $1 AND queue = $2 \
             AND status = $3",
        )
        .bind(&org.id)
        .bind(queue)
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| fail(&format!("count: {e}")))
    });
    n
}

/// `executions` made by 4 producers while 4 workers drain them.
async fn max_rate(
    executions: &ExecutionServiceClient<Channel>,
    workers: &WorkerServiceClient<Channel>,
    worker_token: &str,
    db: &Database,
    org: &Arc<Org>,
    n: usize,
) -> f64 {
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for p in 0..4 {
        let (mut executions, org) = (executions.clone(), org.clone());
        let share = n / 4 + usize::from(p < n % 4);
        tasks.spawn(async move {
            for _ in 0..share {
                create(&mut executions, &org, "max").await;
            }
        });
    }
    spawn_workers(
        &mut tasks,
        workers,
        worker_token,
        "max",
        Duration::from_millis(1),
        done,
        n,
    );
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let passed = count(db, org, "max", "passed").await;
    if passed != n as i64 {
        fail(&format!("max: the server has {passed} passed of {n}"));
    }
    n as f64 / elapsed
}

async fn half_load_latency(
    executions: &ExecutionServiceClient<Channel>,
    workers: &WorkerServiceClient<Channel>,
    worker_token: &str,
    db: &Database,
    org: &Arc<Org>,
    rate: f64,
    seconds: u64,
) -> (usize, f64, f64, f64) {
    let total = (rate * seconds as f64) as usize;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    spawn_workers(
        &mut tasks,
        workers,
        worker_token,
        "half",
        Duration::from_millis(5),
        done,
        total,
    );
    // Open loop: one create every 1/rate seconds, each on its own task so
    // a slow answer does not hold the next back.
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut creates = JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        let (mut executions, org) = (executions.clone(), org.clone());
        creates.spawn(async move { create(&mut executions, &org, "half").await });
    }
    while creates.join_next().await.is_some() {}
    while tasks.join_next().await.is_some() {}
    let mut waits: Vec<i64> = with_pool!(db, |pool| {
        sqlx::query_as::<_, (i64,)>(
            "SELECT started_at - created_at FROM execution_executions WHERE org_id = $1 \
             AND queue = 'half' AND status = 'passed'",
        )
        .bind(&org.id)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| fail(&format!("waits: {e}")))
    })
    .into_iter()
    .map(|(w,)| w)
    .collect();
    if waits.len() != total {
        fail(&format!(
            "half: the server has {} passed of {total}",
            waits.len()
        ));
    }
    waits.sort_unstable();
    let at = |q: f64| waits[((waits.len() as f64 * q) as usize).min(waits.len() - 1)] as f64;
    (
        total,
        at(0.50),
        at(0.99),
        *waits.last().unwrap_or(&0) as f64,
    )
}

/// Plain SQL, the same shape: 4 producers insert, 4 clients claim and
/// complete one row at a time.
async fn raw_rate(db: &Database, n: usize) -> f64 {
    let postgres = matches!(db, Database::Postgres(_));
    let ddl = if postgres {
        "CREATE TABLE bench_raw_jobs (id BIGSERIAL PRIMARY KEY, state TEXT NOT NULL)"
    } else {
        "CREATE TABLE bench_raw_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, state TEXT NOT NULL)"
    };
    with_pool!(db, |pool| {
        sqlx::query("DROP TABLE IF EXISTS bench_raw_jobs")
            .execute(pool)
            .await
            .unwrap_or_else(|e| fail(&format!("raw: {e}")));
        sqlx::query(ddl)
            .execute(pool)
            .await
            .unwrap_or_else(|e| fail(&format!("raw: {e}")));
        sqlx::query("CREATE INDEX bench_raw_pending ON bench_raw_jobs (state, id)")
            .execute(pool)
            .await
            .unwrap_or_else(|e| fail(&format!("raw: {e}")));
    });
    let claim = if postgres {
        "UPDATE bench_raw_jobs SET state = 'running' WHERE id = (SELECT id FROM bench_raw_jobs \
         WHERE state = 'pending' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
    } else {
        "UPDATE bench_raw_jobs SET state = 'running' WHERE id = (SELECT id FROM bench_raw_jobs \
         WHERE state = 'pending' ORDER BY id LIMIT 1) RETURNING id"
    };
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for p in 0..4 {
        let db = db.clone();
        let share = n / 4 + usize::from(p < n % 4);
        tasks.spawn(async move {
            for _ in 0..share {
                with_pool!(&db, |pool| {
                    sqlx::query("INSERT INTO bench_raw_jobs (state) VALUES ('pending')")
                        .execute(pool)
                        .await
                        .unwrap_or_else(|e| fail(&format!("raw insert: {e}")))
                        .rows_affected()
                });
            }
        });
    }
    for _ in 0..4 {
        let (db, done) = (db.clone(), done.clone());
        tasks.spawn(async move {
            while done.load(Ordering::SeqCst) < n {
                let claimed: Option<(i64,)> = with_pool!(&db, |pool| {
                    sqlx::query_as(claim)
                        .fetch_optional(pool)
                        .await
                        .unwrap_or_else(|e| fail(&format!("raw claim: {e}")))
                });
                let Some((id,)) = claimed else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                with_pool!(&db, |pool| {
                    sqlx::query("UPDATE bench_raw_jobs SET state = 'done' WHERE id = $1")
                        .bind(id)
                        .execute(pool)
                        .await
                        .unwrap_or_else(|e| fail(&format!("raw complete: {e}")))
                        .rows_affected()
                });
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    with_pool!(db, |pool| {
        sqlx::query("DROP TABLE bench_raw_jobs")
            .execute(pool)
            .await
            .unwrap_or_else(|e| fail(&format!("raw: {e}")));
    });
    n as f64 / elapsed
}

async fn fairness(
    executions: &ExecutionServiceClient<Channel>,
    workers: &mut WorkerServiceClient<Channel>,
    worker_token: &str,
    flood: &Arc<Org>,
    small: &Org,
) -> (usize, usize) {
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (mut executions, flood) = (executions.clone(), flood.clone());
        tasks.spawn(async move {
            for _ in 0..10_000 / 8 {
                create(&mut executions, &flood, "fair").await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut executions = executions.clone();
    for _ in 0..10 {
        create(&mut executions, small, "fair").await;
    }
    let (mut calls, mut seen) = (0, 0);
    while seen < 10 && calls < 20_000 {
        calls += 1;
        let orgs = lease_and_complete(workers, worker_token, "fair", 1).await;
        seen += orgs.iter().filter(|o| **o == small.id).count();
    }
    (calls, seen)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [
        _,
        auth_url,
        execution_url,
        auth_db,
        execution_db,
        client_id,
        client_secret,
        n,
        seconds,
    ] = args.as_slice()
    else {
        fail(
            "usage: queue_bench <auth_url> <execution_url> <auth_db_url> <execution_db_url> \
             <worker_client_id> <worker_client_secret> <executions> <seconds>",
        )
    };
    let n: usize = n.parse().unwrap_or_else(|_| fail("executions: a number"));
    let seconds: u64 = seconds
        .parse()
        .unwrap_or_else(|_| fail("seconds: a number"));
    let options = DatabaseOptions::default();
    let auth_db = Database::connect(auth_db, &options)
        .await
        .unwrap_or_else(|e| fail(&format!("auth database: {e}")));
    let execution_db = Database::connect(execution_db, &options)
        .await
        .unwrap_or_else(|e| fail(&format!("execution database: {e}")));
    let mut auth = AuthServiceClient::new(connect(auth_url).await);
    let channel = connect(execution_url).await;
    let executions = ExecutionServiceClient::new(channel.clone());
    let mut workers = WorkerServiceClient::new(channel);
    let worker_token = auth
        .issue_service_token(IssueServiceTokenRequest {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
        })
        .await
        .unwrap_or_else(|s| fail(&format!("worker token: {s}")))
        .into_inner()
        .access_token;
    let org = Arc::new(sign_up(&mut auth, &auth_db, "busy").await);
    let small = sign_up(&mut auth, &auth_db, "small").await;

    let max = max_rate(&executions, &workers, &worker_token, &execution_db, &org, n).await;
    println!(
        "max:      {max:.0} executions/s create -> lease -> complete (4 workers, {n} executions)"
    );
    let (total, p50, p99, worst) = half_load_latency(
        &executions,
        &workers,
        &worker_token,
        &execution_db,
        &org,
        max / 2.0,
        seconds,
    )
    .await;
    println!(
        "half:     {total} executions at {:.0}/s: create -> lease p50 {p50:.0} ms, p99 {p99:.0} ms, max {worst:.0} ms",
        max / 2.0
    );
    let raw = raw_rate(&execution_db, n).await;
    println!(
        "raw:      {raw:.0} claims/s plain SQL on the same database ({}); trellis {:.2}x of it",
        if matches!(execution_db, Database::Postgres(_)) {
            "FOR UPDATE SKIP LOCKED"
        } else {
            "SQLite, no row locks"
        },
        max / raw
    );
    let (calls, seen) = fairness(&executions, &mut workers, &worker_token, &org, &small).await;
    println!(
        "fairness: 10 executions behind a backlog of 10 000 from another organization: all {seen} leased within {calls} one-item lease calls"
    );
}
