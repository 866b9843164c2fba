//! Fault scenarios under load: a cluster of real `trellis serve` processes
//! (this test binary re-run as `trellis`, one process per server, two Order
//! and two Execution replicas, two fulfillment-only Order processes as
//! workers) on a private PostgreSQL and Redis started on ports of their own
//! (never the shared ones), driven by the load generator's virtual users
//! (crates/load).
//!
//! - SIGKILL of workers and Order/Execution servers while orders are placed:
//!   no acknowledged order is lost, no effect is duplicated (counted as
//!   effects: executions per order, stock taken, order numbers), every order
//!   ends final once the processes are back.
//! - Redis stopped, then PostgreSQL restarted, under load: calls fail fast
//!   with UNAVAILABLE, nothing acknowledged is lost, service recovers
//!   without restarting Trellis.
//! - SIGTERM of each server under load: no unary call fails, broken
//!   WatchOrder streams end UNAVAILABLE and reopen without missing the end.
//!
//! `cargo test` runs a short version of each (seconds); `bash bench/faults.sh`
//! runs the full sizes (TRELLIS_FAULT_ORDERS=1000 and friends).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;
use tonic::transport::Channel;
use trellis::cart::v1 as cart;
use trellis::execution::v1 as exec;
use trellis::order::v1 as order;
use trellis_auth::service_accounts::{self, ServiceScope};
use trellis_load::{Arrival, CallPolicy, Recorder, RunConfig, Targets, User};
use trellis_store::{Database, DatabaseOptions};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `trellis` binary's entry, for the cluster's processes.
#[test]
#[ignore = "a cluster process of the fault tests; they run it as a child"]
fn trellis_process() {
    let argv: Vec<String> =
        serde_json::from_str(&std::env::var("TRELLIS_TEST_ARGV").expect("TRELLIS_TEST_ARGV"))
            .unwrap();
    let code = trellis_cli::main_from(argv);
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

/// A required program, or a loud skip (a failure when CI requires backends).
fn have(program: &str, what: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("TRELLIS_REQUIRE_BACKENDS").is_none(),
            "{what}: {program} not found and TRELLIS_REQUIRE_BACKENDS is set"
        );
        loud(&format!("SKIPPED: {what} ({program} not found)"));
    }
    found
}

/// A PostgreSQL server of this test's own: its own directory and port.
struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl PrivatePostgres {
    /// PostgreSQL refuses to run as root: as root, it runs as `postgres`.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn start(what: &str) -> Option<PrivatePostgres> {
        let Some(bin) = postgres_bin() else {
            assert!(
                std::env::var_os("TRELLIS_REQUIRE_BACKENDS").is_none(),
                "{what}: no PostgreSQL server binaries under /usr/lib/postgresql and TRELLIS_REQUIRE_BACKENDS is set"
            );
            loud(&format!("SKIPPED: {what} (no PostgreSQL server binaries)"));
            return None;
        };
        let dir = std::env::temp_dir().join(format!("trellis-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let postgres = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
        };
        if is_root() {
            assert!(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&postgres.dir)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let initdb = postgres
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(postgres.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(initdb.success(), "initdb failed");
        postgres.pg_ctl("start");
        Some(postgres)
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let mut command = self.command("pg_ctl");
        command.args(["-w", "-D"]).arg(self.dir.join("data"));
        match action {
            "start" => command
                .args(["-o", &options, "-l"])
                .arg(self.dir.join("log"))
                .arg("start"),
            // Immediate: no checkpoint, recovery from the WAL at the next start.
            "stop" => command.args(["-m", "immediate", "stop"]),
            _ => unreachable!(),
        };
        let status = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action} failed");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server of this test's own, keeping every write (AOF, fsync each).
struct PrivateRedis {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let mut redis = PrivateRedis {
            dir: temp_dir("redis"),
            port: free_port(),
            child: None,
        };
        redis.resume();
        redis
    }

    fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Auth,
    Session,
    Cart,
    Order,
    Execution,
    /// An Order server no client calls: only its fulfillment loops work.
    Worker,
}

/// One `trellis serve` process, restartable on the same port.
struct Process {
    name: String,
    role: Role,
    port: u16,
    argv: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "trellis_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "TRELLIS_TEST_ARGV",
                serde_json::to_string(&self.argv).unwrap(),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (the drain and grace bound it).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        child.wait().unwrap()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Waits until the server on `port` answers health SERVING.
async fn wait_serving(port: u16, name: &str) {
    let started = Instant::now();
    loop {
        let ready = async {
            let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect_timeout(Duration::from_millis(500))
                .connect()
                .await
                .ok()?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let answer = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()?;
            (answer.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                .then_some(())
        };
        if ready.await.is_some() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} on {port} not serving after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Cluster {
    dir: PathBuf,
    processes: Arc<Mutex<Vec<Process>>>,
    postgres: PrivatePostgres,
    redis: Option<PrivateRedis>,
}

impl Cluster {
    /// Auth, Session and Cart once each, two Order and two Execution
    /// replicas, `workers` fulfillment-only Order processes.
    async fn start(what: &str, with_redis: bool, workers: usize) -> Option<Cluster> {
        if with_redis && !have("redis-server", what) {
            return None;
        }
        let postgres = PrivatePostgres::start(what)?;
        let redis = with_redis.then(PrivateRedis::start);
        let dir = temp_dir("faults");
        let mut storage = vec!["--database-url".to_owned(), postgres.url()];
        if let Some(redis) = &redis {
            storage.extend(["--redis-url".to_owned(), redis.url()]);
        }

        let keys = dir.join("signing-keys");
        let mut setup = vec![
            vec!["trellis".to_owned(), "migrate".to_owned()],
            vec![
                "trellis".to_owned(),
                "keys".to_owned(),
                "rotate".to_owned(),
                format!("--signing-keys-dir={}", keys.display()),
            ],
        ];
        setup[0].extend(storage.iter().cloned());
        for argv in setup {
            let mut once = Process {
                name: argv[1].clone(),
                role: Role::Auth,
                port: 0,
                argv,
                child: None,
                log: dir.join("setup.log"),
            };
            once.spawn();
            let done = once.child.take().unwrap().wait().unwrap();
            assert!(
                done.success(),
                "trellis {}: {}",
                once.name,
                std::fs::read_to_string(&once.log).unwrap_or_default()
            );
        }
        let database = Database::connect(&postgres.url(), &DatabaseOptions::default())
            .await
            .unwrap();
        let servers = service_accounts::create(&database, "trellis-servers", ServiceScope::Service)
            .await
            .unwrap();
        let fulfillment = service_accounts::create(&database, "fulfillment", ServiceScope::Worker)
            .await
            .unwrap();
        database.close().await;

        // Two replicas of every server, each listed to its callers (and
        // to the load generator) by URL; the workers lease from one
        // Execution replica each.
        let replicas = |role: Role, server: &str| {
            (0..2)
                .map(|i| (role, format!("{server}-{i}"), free_port()))
                .collect::<Vec<_>>()
        };
        let mut layout = Vec::new();
        for (role, server) in [
            (Role::Auth, "auth"),
            (Role::Session, "session"),
            (Role::Cart, "cart"),
            (Role::Order, "order"),
            (Role::Execution, "execution"),
        ] {
            layout.extend(replicas(role, server));
        }
        for i in 0..workers {
            layout.push((Role::Worker, format!("worker-{i}"), free_port()));
        }
        let urls = |role: Role| {
            layout
                .iter()
                .filter(|(r, _, _)| *r == role)
                .map(|(_, _, port)| format!("http://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let upstreams = [
            format!("--auth-url={}", urls(Role::Auth)),
            format!("--session-url={}", urls(Role::Session)),
            format!("--cart-url={}", urls(Role::Cart)),
            format!("--execution-url={}", urls(Role::Execution)),
        ];
        let mut processes = Vec::new();
        for (index, (role, name, port)) in layout.iter().cloned().enumerate() {
            let server = match role {
                Role::Auth => "auth",
                Role::Session => "session",
                Role::Cart => "cart",
                Role::Order | Role::Worker => "order",
                Role::Execution => "execution",
            };
            let mut argv: Vec<String> = vec!["trellis".into(), "serve".into(), server.into()];
            argv.extend(storage.iter().cloned());
            argv.extend(upstreams.iter().cloned());
            argv.extend([
                "--skip-migrations".to_owned(),
                "--data-dir".to_owned(),
                dir.join(&name).display().to_string(),
                format!("--{server}-addr=127.0.0.1:{port}"),
                format!("--signing-keys-dir={}", keys.display()),
                format!("--service-client-id={}", servers.client_id),
                format!("--service-client-secret={}", servers.client_secret),
                // The load generator signs every user up from loopback.
                "--sign-up-rate=1000000/1h".to_owned(),
                "--shutdown-drain=300ms".to_owned(),
                "--shutdown-grace=10s".to_owned(),
                format!(
                    "--log={}",
                    std::env::var("TRELLIS_FAULT_LOG").unwrap_or("warn".into())
                ),
            ]);
            if server == "order" {
                argv.push(format!("--fulfillment-client-id={}", fulfillment.client_id));
                argv.push(format!(
                    "--fulfillment-client-secret={}",
                    fulfillment.client_secret
                ));
                argv.push(format!(
                    "--fulfillment-workers={}",
                    if role == Role::Worker { 4 } else { 2 }
                ));
            }
            let mut process = Process {
                log: dir.join(format!("{name}.log")),
                name,
                role,
                port,
                argv,
                child: None,
            };
            process.spawn();
            // The first Auth makes the signing key the others then load.
            if index == 0 {
                wait_serving(process.port, &process.name).await;
            }
            processes.push(process);
        }
        for process in &mut processes {
            if let Some(Ok(Some(exit))) = process.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} exited ({exit}): {}",
                    process.name,
                    std::fs::read_to_string(&process.log).unwrap_or_default()
                );
            }
            wait_serving(process.port, &process.name).await;
        }
        Some(Cluster {
            dir,
            processes: Arc::new(Mutex::new(processes)),
            postgres,
            redis,
        })
    }

    fn url(&self, role: Role) -> String {
        self.processes
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.role == role)
            .map(Process::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn targets(&self) -> Targets {
        Targets {
            auth: self.url(Role::Auth),
            session: self.url(Role::Session),
            cart: self.url(Role::Cart),
            order: self.url(Role::Order),
        }
    }

    /// Starts what is not running and waits until all serve.
    async fn restore(&self) {
        let ports: Vec<(u16, String)> = {
            let mut processes = self.processes.lock().unwrap();
            for process in processes.iter_mut() {
                let exited = process
                    .child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().ok().flatten().is_some());
                if exited {
                    process.child = None;
                    process.spawn();
                }
            }
            processes.iter().map(|p| (p.port, p.name.clone())).collect()
        };
        for (port, name) in ports {
            wait_serving(port, &name).await;
        }
    }

    /// The last lines of every process's log, for a failure message.
    fn logs(&self) -> String {
        let processes = self.processes.lock().unwrap();
        processes
            .iter()
            .map(|p| {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                format!(
                    "--- {}\n{}",
                    p.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics (the harness's bug, not a finding) are counted apart.
    fn panics(&self) -> usize {
        let processes = self.processes.lock().unwrap();
        processes
            .iter()
            .map(|p| {
                std::fs::read_to_string(&p.log)
                    .unwrap_or_default()
                    .matches("panicked")
                    .count()
            })
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(mut processes) = self.processes.lock() {
            for process in processes.iter_mut() {
                process.kill();
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            loud(&format!("fault test logs kept in {}", self.dir.display()));
        }
        let _ = &self.postgres;
        let _ = &self.redis;
    }
}

fn load_config(targets: Targets, users: usize, flows: u64, retries: u32) -> RunConfig {
    RunConfig {
        targets,
        users,
        // One flow a second per user: the load spans the faults.
        arrival: Arrival::Closed {
            think: Duration::from_secs(1),
            paced: true,
        },
        duration: Duration::from_secs(env_or("TRELLIS_FAULT_SECONDS", 120)),
        max_flows: Some(flows),
        drain: Duration::from_secs(60),
        policy: CallPolicy {
            deadline: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(120),
            retries,
        },
        setup_concurrency: 8,
        tag: uuid::Uuid::new_v4().simple().to_string()[..10].to_owned(),
        keep_orders: true,
        progress: std::env::var_os("TRELLIS_FAULT_PROGRESS").is_some(),
    }
}

async fn users_for(config: &RunConfig) -> Vec<Arc<User>> {
    trellis_load::run::set_up(config, Vec::new(), Arc::new(Recorder::new(false)))
        .await
        .expect("users set up")
}

fn authed_request<T>(message: T, user: &User) -> tonic::Request<T> {
    authed(message, &user.access_token)
}

const STOCK: i64 = 1_000_000_000;

/// Every order of each user's organization, as stored.
async fn stored_orders(order_url: &str, user: &User) -> Vec<order::Order> {
    let channel = Channel::from_shared(order_url.split(',').next().unwrap().to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = order::order_service_client::OrderServiceClient::new(channel);
    let mut orders = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_orders(authed_request(
                order::ListOrdersRequest {
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                user,
            ))
            .await
            .unwrap()
            .into_inner();
        orders.extend(page.orders);
        if page.next_page_token.is_empty() {
            return orders;
        }
        page_token = page.next_page_token;
    }
}

/// Claims of idempotency keys never placed, by user id.
async fn unplaced_claims(database_url: &str) -> BTreeMap<String, i64> {
    let database = Database::connect(database_url, &DatabaseOptions::default())
        .await
        .unwrap();
    let Database::Postgres(pool) = &database else {
        unreachable!("the cluster runs on PostgreSQL")
    };
    let rows: Vec<(String, i64)> = trellis_store::sqlx::query_as(
        "SELECT user_id, count(*) FROM order_requests WHERE placed = FALSE GROUP BY user_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    database.close().await;
    rows.into_iter().collect()
}

/// The `sub` of a user's access token: its user id.
fn user_id_of(user: &User) -> String {
    use base64::Engine;
    let payload = user.access_token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

/// What the checks found, over every user.
#[derive(Debug, Default)]
struct Audit {
    acknowledged: usize,
    lost: usize,
    stored: usize,
    by_status: BTreeMap<String, usize>,
    /// Orders with more than one fulfillment execution.
    duplicate_executions: usize,
    /// Orders with no fulfillment execution.
    missing_executions: usize,
    /// Stock taken that no live order explains (or missing).
    stock_mismatches: usize,
    /// Placements a killed process left unfinished: their stock is held
    /// until the relay gives abandoned reservations back (10 min).
    abandoned_claims: usize,
    /// Order numbers seen twice, or gaps.
    number_faults: usize,
    not_final: usize,
}

/// Waits for every stored order to be final, then counts effects.
async fn audit(
    cluster: &Cluster,
    users: &[Arc<User>],
    acknowledged: &[trellis_load::PlacedOrder],
) -> Audit {
    let order_url = cluster.url(Role::Order);
    let execution_url = cluster.url(Role::Execution);
    let abandoned = unplaced_claims(&cluster.postgres.url()).await;
    let cart_url = cluster.url(Role::Cart);
    let mut audit = Audit {
        acknowledged: acknowledged.len(),
        ..Audit::default()
    };
    let deadline =
        Instant::now() + Duration::from_secs(env_or("TRELLIS_FAULT_SETTLE_SECONDS", 150));
    let final_status = |s: i32| {
        s == order::OrderStatus::Confirmed as i32
            || s == order::OrderStatus::Failed as i32
            || s == order::OrderStatus::Cancelled as i32
    };
    let first = |urls: &str| urls.split(',').next().unwrap().to_owned();
    let executions_channel = Channel::from_shared(first(&execution_url))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let cart_channel = Channel::from_shared(first(&cart_url))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for user in users {
        let mut orders = stored_orders(&order_url, user).await;
        while orders.iter().any(|o| !final_status(o.status)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            orders = stored_orders(&order_url, user).await;
        }
        let ids: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
        audit.lost += acknowledged
            .iter()
            .filter(|a| a.user == user.index && !ids.contains(a.order_id.as_str()))
            .count();
        audit.stored += orders.len();
        for o in &orders {
            let name = order::OrderStatus::try_from(o.status)
                .map(|s| s.as_str_name().to_owned())
                .unwrap_or_default();
            *audit.by_status.entry(name).or_default() += 1;
            if !final_status(o.status) {
                audit.not_final += 1;
            }
        }
        let mut numbers: Vec<i64> = orders.iter().map(|o| o.number).collect();
        numbers.sort_unstable();
        audit.number_faults += numbers
            .iter()
            .enumerate()
            .filter(|(i, n)| **n != *i as i64 + 1)
            .count();

        // Effects: fulfillment executions made per order.
        let mut executions =
            exec::execution_service_client::ExecutionServiceClient::new(executions_channel.clone());
        let mut per_order: BTreeMap<String, usize> = BTreeMap::new();
        let mut page_token = String::new();
        loop {
            let page = executions
                .list_executions(authed_request(
                    exec::ListExecutionsRequest {
                        queue: "trellis.order-fulfillment".into(),
                        page_size: 500,
                        page_token: page_token.clone(),
                        ..Default::default()
                    },
                    user,
                ))
                .await
                .unwrap()
                .into_inner();
            for execution in page.executions {
                let number = execution
                    .config
                    .get("order_number")
                    .cloned()
                    .unwrap_or_default();
                *per_order.entry(number).or_default() += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        for o in &orders {
            match per_order.get(&o.number.to_string()).copied().unwrap_or(0) {
                0 => audit.missing_executions += 1,
                1 => {}
                _ => audit.duplicate_executions += 1,
            }
        }

        // Effects: stock taken once per live order, given back by failed
        // ones; a placement cut short may still hold its reservation, never
        // more than one.
        let abandoned = abandoned.get(&user_id_of(user)).copied().unwrap_or(0);
        audit.abandoned_claims += abandoned as usize;
        let live = orders
            .iter()
            .filter(|o| {
                o.status != order::OrderStatus::Failed as i32
                    && o.status != order::OrderStatus::Cancelled as i32
            })
            .count() as i64;
        let mut catalog =
            cart::catalog_service_client::CatalogServiceClient::new(cart_channel.clone());
        for (line, product_id) in user.account.products.iter().enumerate() {
            let product = catalog
                .get_product(authed_request(
                    cart::GetProductRequest {
                        product_id: product_id.clone(),
                    },
                    user,
                ))
                .await
                .unwrap()
                .into_inner()
                .product
                .unwrap();
            let taken = STOCK - product.stock.unwrap_or(STOCK);
            let per_order = line as i64 + 1;
            if taken < per_order * live || taken > per_order * (live + abandoned) {
                audit.stock_mismatches += 1;
            }
        }
    }
    audit
}

fn assert_clean(audit: &Audit, cluster: &Cluster) {
    let logs = || cluster.logs();
    assert_eq!(
        audit.lost,
        0,
        "acknowledged orders lost: {audit:?}\n{}",
        logs()
    );
    assert_eq!(
        audit.duplicate_executions,
        0,
        "duplicated fulfillment: {audit:?}\n{}",
        logs()
    );
    assert_eq!(
        audit.missing_executions,
        0,
        "orders without fulfillment: {audit:?}\n{}",
        logs()
    );
    assert_eq!(
        audit.stock_mismatches,
        0,
        "stock taken wrongly: {audit:?}\n{}",
        logs()
    );
    assert_eq!(
        audit.number_faults,
        0,
        "order numbers: {audit:?}\n{}",
        logs()
    );
    assert_eq!(
        audit.not_final,
        0,
        "orders not final: {audit:?}\n{}",
        logs()
    );
    assert_eq!(cluster.panics(), 0, "a process panicked\n{}", logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_workers_and_servers_loses_and_duplicates_nothing() {
    let what = "SIGKILL fault scenario";
    let worker_kills = env_or("TRELLIS_FAULT_WORKER_KILLS", 4) as usize;
    let server_kills = env_or("TRELLIS_FAULT_SERVER_KILLS", 2) as usize;
    let orders = env_or("TRELLIS_FAULT_ORDERS", 200);
    let users = env_or("TRELLIS_FAULT_USERS", 20) as usize;
    let Some(cluster) = Cluster::start(what, false, 2).await else {
        return;
    };
    let config = load_config(cluster.targets(), users, orders, 30);
    let load_users = users_for(&config).await;

    let processes = cluster.processes.clone();
    let killer = tokio::spawn(async move {
        let (mut workers_killed, mut servers_killed) = (0, 0);
        // Kills spread over the run: one every 0.3 to 1.2 s.
        while workers_killed < worker_kills || servers_killed < server_kills {
            let pause = rand::thread_rng().gen_range(300..1200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let kill_worker = servers_killed >= server_kills
                || (workers_killed < worker_kills && rand::thread_rng().gen_bool(0.7));
            let victim = {
                let mut processes = processes.lock().unwrap();
                let candidates: Vec<usize> = (0..processes.len())
                    .filter(|&i| match processes[i].role {
                        Role::Worker => kill_worker,
                        Role::Order | Role::Execution => !kill_worker,
                        _ => false,
                    })
                    .collect();
                let victim = candidates[rand::thread_rng().gen_range(0..candidates.len())];
                processes[victim].kill();
                victim
            };
            if kill_worker {
                workers_killed += 1;
            } else {
                servers_killed += 1;
            }
            // Back after a while, as a supervisor would bring it.
            let down = rand::thread_rng().gen_range(200..1500);
            tokio::time::sleep(Duration::from_millis(down)).await;
            processes.lock().unwrap()[victim].spawn();
        }
        (workers_killed, servers_killed)
    });

    let report = trellis_load::run::run(
        config,
        load_users.clone(),
        (Duration::ZERO, Recorder::new(false).summary()),
    )
    .await;
    let (workers_killed, servers_killed) = killer.await.unwrap();
    cluster.restore().await;
    let audit = audit(&cluster, &load_users, &report.orders).await;
    loud(&format!(
        "SIGKILL scenario: {} flows ok, {} failed; {workers_killed} workers and {servers_killed} servers killed; {audit:?}; errors seen by clients: {:?}",
        report.run.flows_ok,
        report.run.flows_failed,
        report
            .run
            .steps
            .iter()
            .map(|(k, s)| (k.clone(), s.errors.clone()))
            .filter(|(_, e)| !e.is_empty())
            .collect::<Vec<_>>()
    ));
    assert_clean(&audit, &cluster);
    assert!(
        audit.acknowledged as u64 >= orders * 9 / 10,
        "too few orders got through: {audit:?}"
    );
}

fn flow_errors(report: &trellis_load::Report) -> BTreeMap<String, BTreeMap<String, u64>> {
    report
        .run
        .steps
        .iter()
        .filter(|(_, s)| !s.errors.is_empty())
        .map(|(k, s)| (k.clone(), s.errors.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_postgres_restarted_under_load() {
    let what = "Redis and PostgreSQL outage scenario";
    let outage = Duration::from_secs(env_or("TRELLIS_FAULT_OUTAGE_SECONDS", 3));
    let orders = env_or("TRELLIS_FAULT_ORDERS", 200);
    let users = env_or("TRELLIS_FAULT_USERS", 20) as usize;
    let Some(mut cluster) = Cluster::start(what, true, 0).await else {
        return;
    };
    let mut config = load_config(cluster.targets(), users, orders, 0);
    // No retries: every failure is seen, and must be UNAVAILABLE and fast.
    config.policy.deadline = Duration::from_secs(10);
    let load_users = users_for(&config).await;

    let run = tokio::spawn(trellis_load::run::run(
        config.clone(),
        load_users.clone(),
        (Duration::ZERO, Recorder::new(false).summary()),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut redis = cluster.redis.take().unwrap();
    redis.stop();
    tokio::time::sleep(outage).await;
    redis.resume();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.postgres.pg_ctl("stop");
    tokio::time::sleep(outage).await;
    cluster.postgres.pg_ctl("start");
    cluster.redis = Some(redis);
    let report = run.await.unwrap();

    // Recovery without restarting anything: a fresh round must be clean.
    let mut after = config.clone();
    after.max_flows = Some((users as u64).max(10));
    let recovered = trellis_load::run::run(
        after,
        load_users.clone(),
        (Duration::ZERO, Recorder::new(false).summary()),
    )
    .await;
    let acknowledged: Vec<_> = report
        .orders
        .iter()
        .chain(&recovered.orders)
        .cloned()
        .collect();
    let audit = audit(&cluster, &load_users, &acknowledged).await;
    let errors = flow_errors(&report);
    loud(&format!(
        "outage scenario ({outage:?} each): {} flows ok, {} failed; client errors {errors:?}; after: {} ok, {} failed; {audit:?}",
        report.run.flows_ok,
        report.run.flows_failed,
        recovered.run.flows_ok,
        recovered.run.flows_failed
    ));
    assert!(
        !errors.is_empty(),
        "no call met the outage: the scenario tested nothing"
    );
    for (step, by_code) in &errors {
        for code in by_code.keys() {
            // A flow cut by the outage may also see its order end FAILED or
            // not confirm in time; a call itself fails only as UNAVAILABLE.
            assert!(
                code == "UNAVAILABLE" || (step == "PlaceToConfirmed" && code == "WRONG_ANSWER"),
                "{step} failed with {code} during the outage: {:?}\n{}",
                report.run.steps[step].error_samples,
                cluster.logs()
            );
        }
    }
    // Fast: no call waits for its deadline while a backend is away.
    for step in trellis_load::Step::FLOW_RPCS {
        if let Some(s) = report.run.step(step) {
            assert!(
                s.max_ms < 9_000.0,
                "{step:?} took {} ms during the outage",
                s.max_ms
            );
        }
    }
    assert_eq!(
        recovered.errors(),
        0,
        "not recovered: {:?}",
        flow_errors(&recovered)
    );
    assert_clean(&audit, &cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_each_server_under_load_fails_no_unary_call() {
    let what = "SIGTERM fault scenario";
    let users = env_or("TRELLIS_FAULT_USERS", 20) as usize;
    let Some(cluster) = Cluster::start(what, false, 0).await else {
        return;
    };
    let count = cluster.processes.lock().unwrap().len();
    // Flows go on while every process is stopped and started in turn.
    let mut config = load_config(cluster.targets(), users, u64::MAX, 20);
    config.duration = Duration::from_secs(3 * count as u64 + 5);
    let load_users = users_for(&config).await;
    let run = tokio::spawn(trellis_load::run::run(
        config,
        load_users.clone(),
        (Duration::ZERO, Recorder::new(false).summary()),
    ));
    let mut exits = Vec::new();
    for index in 0..count {
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Replicas: one at a time, as a rolling update does. Single servers
        // restart in place, so their callers see the drain and the return.
        let (name, status) = {
            let mut processes = cluster.processes.lock().unwrap();
            let process = &mut processes[index];
            let status = process.terminate();
            process.spawn();
            (process.name.clone(), status)
        };
        exits.push((name, status.code()));
        cluster.restore().await;
    }
    let report = run.await.unwrap();
    let audit = audit(&cluster, &load_users, &report.orders).await;
    let errors = flow_errors(&report);
    loud(&format!(
        "SIGTERM scenario: {} flows ok, {} failed; exits {exits:?}; client errors {errors:?}; {audit:?}",
        report.run.flows_ok, report.run.flows_failed
    ));
    for (name, code) in &exits {
        assert_eq!(*code, Some(0), "{name} did not exit cleanly on SIGTERM");
    }
    // Every drain finished on its own: no connection was cut at the grace.
    let logs = cluster.logs();
    assert!(
        !logs.contains("shutdown grace exceeded"),
        "a shutdown hung:\n{logs}"
    );
    // A call can meet a stopped replica (UNAVAILABLE: retried, with the
    // same idempotency key), never another error; no flow is lost.
    for (step, by_code) in &errors {
        assert!(
            by_code.keys().all(|c| c == "UNAVAILABLE"),
            "{step} failed: {by_code:?} {:?}\n{}",
            report.run.steps[step].error_samples,
            cluster.logs()
        );
    }
    assert_eq!(report.run.flows_failed, 0, "flows failed: {errors:?}");
    assert_clean(&audit, &cluster);
}
