//! `trellis worker`: a worker others can copy. Leases executions of the
//! named queues with a worker account, runs each one's `command` as a
//! subprocess (only programs named by `--allow`; nothing by default), sends
//! its output as log lines, heartbeats (stopping the program when
//! cancellation is asked), and reports PASSED (exit 0) or FAILED (any other
//! exit). A program that overruns `--timeout` is stopped and the attempt
//! failed as retryable; a program not allowed, or one that cannot start,
//! fails the execution for good.
//!
//! The program gets the execution's payload on stdin, runs in a fresh
//! empty directory (mode 0700) in a process group of its own (killed with
//! it), and sees TRELLIS_EXECUTION_ID, TRELLIS_ORGANIZATION_ID,
//! TRELLIS_ATTEMPT and TRELLIS_FOLDER; nothing else of the worker's
//! environment but PATH. It runs as the worker's own OS user, so it can
//! read what that user can (the worker's environment in /proc included):
//! allow only trusted programs, or run the worker as a user of its own
//! with the secret in a file only it reads (`--client-secret-file`).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Channel;
use trellis::execution::v1 as pb;
use trellis::execution::v1::worker_service_client::WorkerServiceClient;
use trellis_runtime::{ClientTls, TlsArgs, UpstreamTarget};
use trellis_tenancy::{AsService, AsServiceLayer, ServiceCredentials, ServiceTokens};

use crate::{CliError, Secret};

/// Lines sent per AppendLogs, and the longest wait before sending.
const LOG_BATCH: usize = 200;
const LOG_FLUSH: Duration = Duration::from_millis(250);
/// The server's bound on one line; longer output is split.
const MAX_LINE_BYTES: usize = 8 * 1024;
/// Lines of one execution this worker sends at most (the server keeps
/// 100 000); the rest is counted and said in one last line.
const MAX_LINES: u64 = 90_000;

#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Queue to lease from (repeat for several).
    #[arg(long = "queue", required = true)]
    pub queues: Vec<String>,
    /// A program the worker may run: the execution's command[0] must equal
    /// one of these exactly (repeat for several). None: nothing runs.
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// Executions run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub concurrency: u32,
    /// Longest one run may take before it is stopped (and retried).
    #[arg(long, default_value = "10m", value_parser = trellis_runtime::parse_duration)]
    pub timeout: Duration,
    /// Lease duration; heartbeats come every third of it.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i32).range(5..=3600))]
    pub lease_seconds: i32,
    /// Where Auth is (worker tokens come from its IssueServiceToken).
    #[arg(
        long,
        env = "TRELLIS_AUTH_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_url: String,
    /// Where the Execution server is.
    #[arg(
        long,
        env = "TRELLIS_EXECUTION_URL",
        default_value = "http://127.0.0.1:50055"
    )]
    pub execution_url: String,
    /// The worker account (`trellis service-accounts create NAME --scope
    /// worker`).
    #[arg(long, env = "TRELLIS_WORKER_CLIENT_ID")]
    pub client_id: String,
    /// Prefer the variable to the flag: flags show in the process list.
    #[arg(
        long,
        env = "TRELLIS_WORKER_CLIENT_SECRET",
        hide_env_values = true,
        required_unless_present = "client_secret_file",
        conflicts_with = "client_secret_file"
    )]
    pub client_secret: Option<Secret>,
    /// A file holding the secret (surrounding whitespace ignored): keeps it
    /// out of the worker's environment, which the programs it runs as the
    /// same user could read.
    #[arg(long, env = "TRELLIS_WORKER_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// How often an idle worker asks again.
    #[arg(long, default_value = "1s", value_parser = trellis_runtime::parse_duration)]
    pub poll_interval: Duration,
    /// PEM CA bundle the servers' certificates are checked against; set,
    /// the URLs are `https://`.
    #[arg(long, env = "TRELLIS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate this worker presents, when the servers it calls ask
    /// for one (mTLS): its own, `clientAuth`, never a server's.
    #[arg(long, env = "TRELLIS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TRELLIS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

type Workers = WorkerServiceClient<AsService<Channel>>;

/// A lazily connected channel to `url`: `https://` with --tls-ca (the
/// worker's --tls-cert presented when mTLS is on), spread over the
/// name's addresses.
fn endpoint(url: &str, args: &WorkerArgs) -> Result<Channel, CliError> {
    let tls = TlsArgs {
        tls_ca: args.tls_ca.clone(),
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        tls_client_ca: None,
    };
    tls.validate()?;
    let tls = &tls;
    let target = UpstreamTarget::new(url, ClientTls::from_args(tls)).map_err(CliError::Invalid)?;
    Ok(target.connect(1))
}

/// Leases and runs until `stop` resolves, then lets the runs in progress
/// finish (each bounded by --timeout).
pub async fn run(
    args: &WorkerArgs,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    if args.allow.is_empty() {
        tracing::warn!("no --allow: every execution leased will fail with 'command not allowed'");
    }
    let client_secret = match (&args.client_secret, &args.client_secret_file) {
        (Some(secret), _) => secret.0.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| CliError::Invalid(format!("client-secret-file {}: {e}", file.display())))?
            .trim()
            .to_owned(),
        (None, None) => {
            return Err(CliError::Invalid(
                "set --client-secret or --client-secret-file".into(),
            ));
        }
    };
    let tokens = Arc::new(ServiceTokens::new(
        endpoint(&args.auth_url, args)?,
        ServiceCredentials {
            client_id: args.client_id.clone(),
            client_secret,
        },
        Duration::from_secs(3),
    ));
    let workers: Workers = WorkerServiceClient::new(tower::Layer::layer(
        &AsServiceLayer::new(tokens),
        endpoint(&args.execution_url, args)?,
    ));
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let args = Arc::new(args.clone());
    tokio::pin!(stop);
    tracing::info!(queues = ?args.queues, allow = ?args.allow, "worker started");
    loop {
        let free = slots.available_permits();
        let pause = if free == 0 {
            // Wait for a slot (or the stop) before asking for more.
            tokio::select! {
                () = &mut stop => break,
                permit = slots.clone().acquire_owned() => drop(permit),
            }
            continue;
        } else {
            let mut request = tonic::Request::new(pb::LeaseRequest {
                queues: args.queues.clone(),
                max_items: free.min(100) as i32,
                lease_seconds: args.lease_seconds,
            });
            request.set_timeout(Duration::from_secs(10));
            match workers.clone().lease(request).await {
                Ok(answer) => {
                    let leases = answer.into_inner().leases;
                    let idle = leases.is_empty();
                    for leased in leases {
                        let permit = slots.clone().acquire_owned().await.expect("never closed");
                        let (workers, args) = (workers.clone(), args.clone());
                        tokio::spawn(async move {
                            execute(&workers, &args, leased).await;
                            drop(permit);
                        });
                    }
                    if idle {
                        args.poll_interval
                    } else {
                        Duration::ZERO
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "lease failed; retrying");
                    Duration::from_secs(1)
                }
            }
        };
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    tracing::info!("stopping: waiting for the runs in progress");
    let _all = slots.acquire_many(args.concurrency).await;
    tracing::info!("stopped");
    Ok(())
}

/// How a run ended.
enum Ended {
    Exited(std::process::ExitStatus),
    Cancelled,
    TimedOut,
    /// The lease is gone (expired, or reclaimed): someone else runs it.
    LeaseLost,
}

async fn execute(workers: &Workers, args: &WorkerArgs, leased: pb::LeasedExecution) {
    let lease_id = leased.lease_id.clone();
    let Some(execution) = leased.execution else {
        return;
    };
    let Some(program) = execution.command.first().cloned() else {
        return fail(workers, &lease_id, "the execution has no command", false).await;
    };
    if !args.allow.contains(&program) {
        let error = format!("command not allowed by this worker: {program}");
        return fail(workers, &lease_id, &error, false).await;
    }
    let dir = match run_directory(&execution.execution_id) {
        Ok(dir) => dir,
        Err(error) => {
            let error = format!("no work directory: {error}");
            return fail(workers, &lease_id, &error, true).await;
        }
    };
    let ended = supervise(
        workers,
        args,
        &lease_id,
        &leased.organization_id,
        &execution,
        &dir,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut workers = workers.clone();
    let reported = match ended {
        Ok(Ended::Exited(status)) => {
            let passed = status.success();
            let analysis = if passed {
                String::new()
            } else {
                format!("exited with {status}")
            };
            workers
                .complete(pb::CompleteRequest {
                    lease_id: lease_id.clone(),
                    status: if passed {
                        pb::ExecutionStatus::Passed
                    } else {
                        pb::ExecutionStatus::Failed
                    } as i32,
                    output: Vec::new(),
                    analysis,
                })
                .await
                .map(drop)
        }
        Ok(Ended::Cancelled) => {
            return fail(&workers, &lease_id, "cancelled", false).await;
        }
        Ok(Ended::TimedOut) => {
            let error = format!("timed out after {:?}", args.timeout);
            return fail(&workers, &lease_id, &error, true).await;
        }
        Ok(Ended::LeaseLost) => return,
        Err(error) => return fail(&workers, &lease_id, &error, false).await,
    };
    if let Err(status) = reported {
        tracing::warn!(code = ?status.code(), message = status.message(), "reporting a run failed");
    }
}

/// A new directory of this run's own (never one that existed: a name with
/// the time and process in it, made with `create_dir`), readable by this
/// user only.
fn run_directory(execution_id: &str) -> std::io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "trellis-run-{execution_id}-{}-{nanos}",
        std::process::id()
    ));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir)?;
    Ok(dir)
}

/// Ends every process of a run: the program and whatever it started in
/// the background (its process group, of which it is the leader).
fn kill_group(leader: Option<u32>) {
    if let Some(pid) = leader {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

async fn fail(workers: &Workers, lease_id: &str, error: &str, retryable: bool) {
    let failed = workers
        .clone()
        .fail(pb::FailRequest {
            lease_id: lease_id.into(),
            error: error.into(),
            retryable,
        })
        .await;
    if let Err(status) = failed {
        tracing::warn!(code = ?status.code(), message = status.message(), "reporting a failure failed");
    }
}

/// Runs the program to its end, sending its output, heartbeating, and
/// stopping it on cancellation, timeout or a lost lease.
async fn supervise(
    workers: &Workers,
    args: &WorkerArgs,
    lease_id: &str,
    organization_id: &str,
    execution: &pb::Execution,
    dir: &PathBuf,
) -> Result<Ended, String> {
    let mut command = tokio::process::Command::new(&execution.command[0]);
    command
        .args(&execution.command[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TRELLIS_EXECUTION_ID", &execution.execution_id)
        .env("TRELLIS_ORGANIZATION_ID", organization_id)
        .env("TRELLIS_ATTEMPT", execution.attempt.to_string())
        .env("TRELLIS_FOLDER", &execution.folder)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so its background processes end with it.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", execution.command[0]))?;
    let mut stdin = child.stdin.take().expect("piped");
    let payload = execution.payload.clone();
    tokio::spawn(async move {
        // A program that never reads its input is not an error.
        let _ = stdin.write_all(&payload).await;
    });
    let (lines_in, mut lines_out) = mpsc::channel::<String>(1024);
    let readers = [
        tokio::spawn(read_lines(
            child.stdout.take().expect("piped"),
            lines_in.clone(),
        )),
        tokio::spawn(read_lines(child.stderr.take().expect("piped"), lines_in)),
    ];
    let beat_every = Duration::from_secs(u64::try_from(args.lease_seconds).unwrap_or(60) / 3);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + beat_every, beat_every);
    let mut flush = tokio::time::interval(LOG_FLUSH);
    let deadline = tokio::time::sleep(args.timeout);
    tokio::pin!(deadline);
    let mut batch: Vec<String> = Vec::new();
    let mut sent: u64 = 0;
    let mut dropped: u64 = 0;
    let mut output_open = true;
    let leader = child.id();
    // Once the program exits, its output gets this long to drain (a
    // background process may hold the pipes open).
    let mut exited: Option<std::process::ExitStatus> = None;
    let drained = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(drained);
    let ended = loop {
        tokio::select! {
            line = lines_out.recv(), if output_open => match line {
                Some(line) => {
                    if sent + batch.len() as u64 >= MAX_LINES {
                        dropped += 1;
                    } else {
                        batch.push(line);
                    }
                    if batch.len() >= LOG_BATCH {
                        sent += send_logs(workers, lease_id, &mut batch).await;
                    }
                }
                None => {
                    output_open = false;
                    if let Some(status) = exited {
                        break Ended::Exited(status);
                    }
                }
            },
            status = child.wait(), if exited.is_none() => {
                let status = status.map_err(|e| e.to_string())?;
                if !output_open {
                    break Ended::Exited(status);
                }
                exited = Some(status);
                drained.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            () = &mut drained, if exited.is_some() => {
                break Ended::Exited(exited.expect("exited"));
            }
            _ = flush.tick() => {
                sent += send_logs(workers, lease_id, &mut batch).await;
            }
            _ = beat.tick() => {
                match workers.clone().heartbeat(pb::HeartbeatRequest {
                    lease_id: lease_id.into(),
                    lease_seconds: 0,
                }).await {
                    Ok(answer) if answer.get_ref().cancel_requested => break Ended::Cancelled,
                    Ok(_) => {}
                    Err(status) if status.code() == tonic::Code::NotFound => break Ended::LeaseLost,
                    // Transient: the next beat may land before the lease ends.
                    Err(status) => tracing::warn!(code = ?status.code(), "heartbeat failed"),
                }
            }
            () = &mut deadline => break Ended::TimedOut,
        }
    };
    kill_group(leader);
    if !matches!(ended, Ended::Exited(_)) {
        let _ = child.kill().await;
    }
    for reader in readers {
        reader.abort();
    }
    while let Ok(line) = lines_out.try_recv() {
        if sent + (batch.len() as u64) < MAX_LINES {
            batch.push(line);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        batch.push(format!("[trellis worker: {dropped} more lines not sent]"));
    }
    while !batch.is_empty() {
        let before = batch.len();
        send_logs(workers, lease_id, &mut batch).await;
        if batch.len() == before {
            break;
        }
    }
    Ok(ended)
}

/// Sends up to [`LOG_BATCH`] lines; how many went. Lines that cannot be
/// sent (the lease is gone, the server is away) are dropped: logs are a
/// courtesy, the run's result is what counts.
async fn send_logs(workers: &Workers, lease_id: &str, batch: &mut Vec<String>) -> u64 {
    if batch.is_empty() {
        return 0;
    }
    let lines: Vec<String> = batch.drain(..batch.len().min(LOG_BATCH)).collect();
    let count = lines.len() as u64;
    let appended = workers
        .clone()
        .append_logs(pb::AppendLogsRequest {
            lease_id: lease_id.into(),
            lines,
        })
        .await;
    match appended {
        Ok(_) => count,
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "sending log lines failed");
            0
        }
    }
}

/// Splits a stream into lines of at most [`MAX_LINE_BYTES`] (a longer
/// one is cut into several, so memory stays bounded whatever the program
/// prints), read as UTF-8 with replacement.
async fn read_lines(stream: impl tokio::io::AsyncRead + Unpin, lines: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    loop {
        let (used, newline) = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                if !line.is_empty() {
                    let _ = lines.send(text_of(&line)).await;
                }
                return;
            }
            Ok(buffer) => {
                let room = MAX_LINE_BYTES - line.len();
                match buffer.iter().take(room).position(|b| *b == b'\n') {
                    Some(at) => {
                        line.extend_from_slice(&buffer[..at]);
                        (at + 1, true)
                    }
                    None => {
                        let used = buffer.len().min(room);
                        line.extend_from_slice(&buffer[..used]);
                        (used, line.len() >= MAX_LINE_BYTES)
                    }
                }
            }
        };
        reader.consume(used);
        if newline {
            if lines.send(text_of(&line)).await.is_err() {
                return;
            }
            line.clear();
        }
    }
}

/// A line as text: a trailing CR dropped, invalid UTF-8 replaced (a cut
/// through a character costs that character, not the line).
fn text_of(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let mut text = String::from_utf8_lossy(raw).into_owned();
    // Replacement characters can make it longer than the server's bound.
    if text.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
