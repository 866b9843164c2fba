//! `trellis-load flow`: N virtual users looping the order flow against
//! `trellis up`, `trellis serve` or the gateway; `trellis-load unary`: the
//! auth-overhead client. See README, "Load and fault testing".

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use trellis_load::unary::{self, UnaryConfig};
use trellis_load::{Account, Arrival, CallPolicy, Recorder, Report, RunConfig, Step, Targets};

#[derive(Parser)]
#[command(name = "trellis-load", about = "Load generator for Trellis")]
struct Cli {
    /// Tokio worker threads of the generator (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Virtual users looping: session, three items with options, order,
    /// WatchOrder to CONFIRMED.
    Flow(Box<FlowArgs>),
    /// WhoAmI as fast as possible (the auth-overhead benchmark's client).
    Unary(UnaryArgs),
    /// Signs up a new organization and prints its admin's access token.
    Token {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        auth_url: String,
    },
    /// A hostile HTTP/2 client for a bounded time (bench/hostile.sh).
    Hostile {
        #[arg(long, value_enum)]
        attack: trellis_load::hostile::Attack,
        /// host:port of a server or the gateway (plaintext HTTP/2).
        #[arg(long)]
        address: std::net::SocketAddr,
        #[arg(long, default_value = "10s", value_parser = trellis_load::parse_duration)]
        duration: Duration,
        /// Attacking connections at once.
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
}

#[derive(clap::Args)]
struct FlowArgs {
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Closed loop: each user's wait after a flow (0.5x-1.5x, random).
    #[arg(long, default_value = "5s", value_parser = trellis_load::parse_duration)]
    think: Duration,
    /// Closed loop, paced: each user starts a flow every --think.
    #[arg(long)]
    paced: bool,
    /// Open loop: flows start at this rate a second (Poisson), whatever
    /// the answers do; users take turns.
    #[arg(long)]
    open_rate: Option<f64>,
    /// Open loop: flows in flight at most; arrivals beyond are dropped and
    /// counted as errors.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// How long flows keep starting.
    #[arg(long, default_value = "60s", value_parser = trellis_load::parse_duration)]
    duration: Duration,
    /// Stop after this many flows have started.
    #[arg(long)]
    flows: Option<u64>,
    /// Time given to flows in flight at the end.
    #[arg(long, default_value = "30s", value_parser = trellis_load::parse_duration)]
    drain: Duration,
    /// Every call through the gateway (plain gRPC on its port).
    #[arg(long, conflicts_with_all = ["auth_url", "session_url", "cart_url", "order_url"])]
    gateway: Option<String>,
    /// Comma-separated URLs balance over replicas.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    auth_url: String,
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    session_url: String,
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    cart_url: String,
    #[arg(long, default_value = "http://127.0.0.1:50054")]
    order_url: String,
    /// Accounts of an earlier run to log in to (and where this run's are
    /// written): repeated runs do not sign up again.
    #[arg(long)]
    accounts: Option<PathBuf>,
    /// Names this run's new accounts: load.<tag>.<n>@example.com.
    #[arg(long)]
    tag: Option<String>,
    #[arg(long, default_value_t = 16)]
    setup_concurrency: usize,
    /// Retries of a call answered UNAVAILABLE (PlaceOrder with its key).
    #[arg(long, default_value_t = 0)]
    retries: u32,
    #[arg(long, default_value = "10s", value_parser = trellis_load::parse_duration)]
    deadline: Duration,
    #[arg(long, default_value = "30s", value_parser = trellis_load::parse_duration)]
    confirm_timeout: Duration,
    /// Results as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Latency and throughput over time, as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Exit 1 unless every flow RPC's p95 is at most this.
    #[arg(long)]
    goal_rpc_p95_ms: Option<f64>,
    /// Exit 1 unless place -> confirmed p95 is at most this.
    #[arg(long)]
    goal_confirm_p95_ms: Option<f64>,
    /// No progress line each second.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct UnaryArgs {
    #[arg(long)]
    url: String,
    /// A file holding the access token; none: calls without authorization.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Concurrent calls per connection.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    #[arg(long, default_value_t = 20_000)]
    warmup: u64,
    /// Paced calls per second in all instead of as fast as they go.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().build().expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Flow(args) => flow(*args).await,
            Command::Unary(args) => unary(args).await,
            Command::Token { auth_url } => token(&auth_url).await,
            Command::Hostile {
                attack,
                address,
                duration,
                connections,
            } => {
                let report =
                    trellis_load::hostile::run(attack, address, duration, connections).await;
                println!("{}", serde_json::to_string(&report).unwrap());
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("trellis-load: {message}");
            ExitCode::from(2)
        }
    }
}

fn write(path: &PathBuf, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

async fn flow(args: FlowArgs) -> Result<ExitCode, String> {
    let targets = match &args.gateway {
        Some(url) => Targets::gateway(url),
        None => Targets {
            auth: args.auth_url.clone(),
            session: args.session_url.clone(),
            cart: args.cart_url.clone(),
            order: args.order_url.clone(),
        },
    };
    let arrival = match args.open_rate {
        Some(rate) if rate > 0.0 => Arrival::Open {
            rate,
            max_in_flight: args.max_in_flight,
        },
        Some(_) => return Err("--open-rate must be above 0".into()),
        None => Arrival::Closed {
            think: args.think,
            paced: args.paced,
        },
    };
    if args.users == 0 {
        return Err("--users must be at least 1".into());
    }
    let config = RunConfig {
        targets,
        users: args.users,
        arrival,
        duration: args.duration,
        max_flows: args.flows,
        drain: args.drain,
        policy: CallPolicy {
            deadline: args.deadline,
            confirm_timeout: args.confirm_timeout,
            retries: args.retries,
        },
        setup_concurrency: args.setup_concurrency,
        tag: args
            .tag
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()),
        keep_orders: false,
        progress: !args.quiet,
    };

    let known: Vec<Account> = match &args.accounts {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        _ => Vec::new(),
    };
    let logins = known.len().min(config.users);
    eprintln!(
        "setting up {} users ({logins} log in, {} sign up, {} at a time)",
        config.users,
        config.users - logins,
        config.setup_concurrency
    );
    let setup_recorder = Arc::new(Recorder::new(false));
    let setup_started = Instant::now();
    let mut users =
        trellis_load::run::set_up(&config, known.clone(), setup_recorder.clone()).await?;
    let setup_elapsed = setup_started.elapsed();
    eprintln!("set up in {:.1} s", setup_elapsed.as_secs_f64());
    if let Some(path) = &args.accounts {
        // Accounts beyond this run's users stay for a bigger run.
        let mut accounts: Vec<Account> = users.iter().map(|u| u.account.clone()).collect();
        accounts.extend(known.into_iter().skip(config.users));
        write(path, &serde_json::to_string_pretty(&accounts).unwrap())?;
    }
    users.shrink_to_fit();

    let report =
        trellis_load::run::run(config, users, (setup_elapsed, setup_recorder.summary())).await;
    print_report(&report);
    if let Some(path) = &args.out {
        write(path, &serde_json::to_string_pretty(&report).unwrap())?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} users, {:.1} flows/s, {} errors",
            report.config.users,
            report.flows_per_second,
            report.errors()
        );
        write(path, &trellis_load::plot::svg(&report, &title))?;
    }

    let mut met = report.errors() == 0 && report.run.flows_ok > 0;
    let (worst, worst_p95) = report.worst_rpc_p95();
    if let Some(goal) = args.goal_rpc_p95_ms {
        let ok = worst_p95 <= goal;
        println!(
            "goal per-RPC p95 <= {goal} ms: {} (worst {} {worst_p95:.1} ms)",
            verdict(ok),
            worst.name()
        );
        met &= ok;
    }
    if let Some(goal) = args.goal_confirm_p95_ms {
        let ok = report.confirm_p95() <= goal;
        println!(
            "goal place -> confirmed p95 <= {goal} ms: {} ({:.1} ms)",
            verdict(ok),
            report.confirm_p95()
        );
        met &= ok;
    }
    println!(
        "errors: {}: {}",
        report.errors(),
        verdict(report.errors() == 0)
    );
    Ok(if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

fn print_report(report: &Report) {
    println!(
        "\n{} users, {:.1} s: {} flows ok ({:.1}/s), {} failed, {} arrivals dropped, {} unfinished",
        report.config.users,
        report.run_seconds,
        report.run.flows_ok,
        report.flows_per_second,
        report.run.flows_failed,
        report.dropped_arrivals,
        report.unfinished_flows
    );
    println!(
        "{:<22} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "step", "ok", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    let order = [
        Step::SignUp,
        Step::Login,
        Step::CreateProduct,
        Step::CreateSession,
        Step::AddItem,
        Step::PlaceOrder,
        Step::WatchOrder,
        Step::PlaceToConfirmed,
        Step::Flow,
    ];
    for (phase, summary) in [("setup", &report.setup), ("run", &report.run)] {
        for step in order {
            if let Some(s) = summary.step(step) {
                println!(
                    "{:<22} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    format!(
                        "{}{}",
                        if phase == "setup" { "(setup) " } else { "" },
                        step.name()
                    ),
                    s.ok,
                    s.error_count(),
                    s.p50_ms,
                    s.p95_ms,
                    s.p99_ms,
                    s.max_ms
                );
                for sample in &s.error_samples {
                    println!("    {sample}");
                }
            }
        }
    }
}

async fn unary(args: UnaryArgs) -> Result<ExitCode, String> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let report = unary::who_am_i(UnaryConfig {
        url: args.url,
        token,
        connections: args.connections,
        streams: args.streams,
        requests: args.requests,
        warmup: args.warmup,
        rate: args.rate,
    })
    .await?;
    println!(
        "requests {} ok {} errors {:?} seconds {:.3} rps {:.0} p50_us {} p99_us {} max_us {}",
        report.config.requests,
        report.ok,
        report.errors,
        report.seconds,
        report.requests_per_second,
        report.p50_us,
        report.p99_us,
        report.max_us
    );
    if let Some(path) = &args.out {
        write(path, &serde_json::to_string_pretty(&report).unwrap())?;
    }
    Ok(
        if report.errors.is_empty() && report.ok == report.config.requests {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

async fn token(auth_url: &str) -> Result<ExitCode, String> {
    use trellis::auth::v1::SignUpRequest;
    use trellis::auth::v1::auth_service_client::AuthServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(auth_url.to_owned())
        .map_err(|e| format!("url {auth_url:?}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {auth_url}: {e}"))?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let signed_up = AuthServiceClient::new(channel)
        .sign_up(SignUpRequest {
            email: format!("load.token.{tag}@example.com"),
            password: trellis_load::flow::PASSWORD.into(),
            name: "Load token".into(),
            organization_name: format!("Load token {tag}"),
        })
        .await
        .map_err(|status| format!("SignUp: {:?} {}", status.code(), status.message()))?;
    println!("{}", signed_up.into_inner().access_token);
    Ok(ExitCode::SUCCESS)
}
