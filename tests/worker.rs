//! `trellis worker` against real servers: an allowed command runs with its
//! payload on stdin and its output as log lines, PASSED on exit 0 and
//! FAILED otherwise; a command not allowed never runs (ERROR, said why);
//! a cancel request stops a running program (CANCELLED).

mod common;

use std::time::Duration;

use clap::Parser;
use common::*;
use trellis::auth::v1::SignUpRequest;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::execution::v1 as pb;
use trellis::execution::v1::execution_service_client::ExecutionServiceClient;
use trellis_auth::service_accounts::{self, ServiceScope};
use trellis_cli::{Cli, Command, ServiceName};
use trellis_store::{Database, DatabaseOptions};

async fn create(
    executions: &mut ExecutionServiceClient<tonic::transport::Channel>,
    token: &str,
    command: &[&str],
    payload: &[u8],
) -> String {
    executions
        .create_execution(authed(
            pb::CreateExecutionRequest {
                queue: "scripts".into(),
                image: "local".into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                payload: payload.to_vec(),
                max_attempts: 1,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap()
        .execution_id
}

async fn final_state(
    executions: &mut ExecutionServiceClient<tonic::transport::Channel>,
    token: &str,
    id: &str,
) -> pb::Execution {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let execution = executions
            .get_execution(authed(
                pb::GetExecutionRequest {
                    execution_id: id.into(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .execution
            .unwrap();
        if !matches!(
            execution.status(),
            pb::ExecutionStatus::Pending | pb::ExecutionStatus::Running
        ) {
            return execution;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log_lines(
    executions: &mut ExecutionServiceClient<tonic::transport::Channel>,
    token: &str,
    id: &str,
) -> Vec<String> {
    let mut stream = executions
        .stream_logs(authed(
            pb::StreamLogsRequest {
                execution_id: id.into(),
                follow: false,
                after_sequence: 0,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        lines.extend(batch.lines.into_iter().map(|l| l.line));
    }
    lines
}

#[tokio::test]
async fn the_worker_runs_allowed_commands_only() {
    let data_dir = temp_dir("worker");
    let running = trellis_cli::start(&ServiceName::ALL, &up_args(&data_dir, &[]))
        .await
        .unwrap();
    let auth_database = Database::connect(
        &trellis_store::default_sqlite_url(&data_dir, "auth"),
        &DatabaseOptions::default(),
    )
    .await
    .unwrap();
    let account = service_accounts::create(&auth_database, "sh-runner", ServiceScope::Worker)
        .await
        .unwrap();
    let auth_url = format!("http://{}", running.address(ServiceName::Auth).unwrap());
    let execution_url = format!(
        "http://{}",
        running.address(ServiceName::Execution).unwrap()
    );
    // With `=`: a secret may begin with '-'.
    let client_id = format!("--client-id={}", account.client_id);
    let client_secret = format!("--client-secret={}", account.client_secret);
    let Command::Worker(args) = Cli::parse_from([
        "trellis",
        "worker",
        "--queue",
        "scripts",
        "--allow",
        "sh",
        "--concurrency",
        "4",
        "--lease-seconds",
        "6",
        "--poll-interval",
        "50ms",
        "--auth-url",
        &auth_url,
        "--execution-url",
        &execution_url,
        &client_id,
        &client_secret,
    ])
    .command
    else {
        unreachable!()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(async move {
        trellis_cli::worker::run(&args, async {
            let _ = stopped.await;
        })
        .await
    });

    let mut auth =
        AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let token = auth
        .sign_up(SignUpRequest {
            email: format!("ana.{}@example.com", uuid::Uuid::new_v4().simple()),
            password: "Correct-Horse-9".into(),
            name: "Ana".into(),
            organization_name: format!("ana {}", uuid::Uuid::new_v4().simple()),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let mut executions = ExecutionServiceClient::new(
        channel(running.address(ServiceName::Execution).unwrap()).await,
    );

    let passes = create(
        &mut executions,
        &token,
        &["sh", "-c", "echo hello; echo oops >&2; cat"],
        b"from stdin\n",
    )
    .await;
    let passed = final_state(&mut executions, &token, &passes).await;
    assert_eq!(passed.status(), pb::ExecutionStatus::Passed);
    let mut lines = log_lines(&mut executions, &token, &passes).await;
    lines.sort();
    assert_eq!(lines, ["from stdin", "hello", "oops"]);

    // A background process holding the output open neither keeps the run
    // going nor outlives it.
    let background = create(
        &mut executions,
        &token,
        &["sh", "-c", "sleep 299.75 & echo started"],
        b"",
    )
    .await;
    let done = final_state(&mut executions, &token, &background).await;
    assert_eq!(done.status(), pb::ExecutionStatus::Passed);
    let stray = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 299.75$"])
        .output()
        .unwrap();
    assert!(
        stray.stdout.is_empty(),
        "the run's background process was killed"
    );

    let fails = create(&mut executions, &token, &["sh", "-c", "exit 3"], b"").await;
    let failed = final_state(&mut executions, &token, &fails).await;
    assert_eq!(failed.status(), pb::ExecutionStatus::Failed);

    let marker = data_dir.join("must-not-exist");
    let marker = marker.display().to_string();
    let refused = create(&mut executions, &token, &["touch", &marker], b"").await;
    let refused = final_state(&mut executions, &token, &refused).await;
    assert_eq!(refused.status(), pb::ExecutionStatus::Error);
    assert!(refused.error.contains("not allowed"), "{}", refused.error);
    assert!(!std::path::Path::new(&marker).exists());

    let long = create(&mut executions, &token, &["sh", "-c", "sleep 60"], b"").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = executions
            .get_execution(authed(
                pb::GetExecutionRequest {
                    execution_id: long.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .execution
            .unwrap();
        if now.status() == pb::ExecutionStatus::Running {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    executions
        .cancel_execution(authed(
            pb::CancelExecutionRequest {
                execution_id: long.clone(),
            },
            &token,
        ))
        .await
        .unwrap();
    // Seen at the next heartbeat (every 2 s with 6 s leases).
    let cancelled = final_state(&mut executions, &token, &long).await;
    assert_eq!(cancelled.status(), pb::ExecutionStatus::Cancelled);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}
