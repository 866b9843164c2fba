//! Load client of `bench/login_load.sh`: real logins over gRPC, spread over
//! many accounts (one account and address may only have a few attempts in
//! flight), every answer's status checked.
//!
//! ```text
//! login_storm sign-up <url> <tag> <accounts>
//! login_storm storm   <url> <tag> <accounts> <concurrency> <logins>
//! login_storm timing  <url> <tag> <samples>
//! login_storm raw     <seconds>
//! ```
//!
//! Accounts are `bench.<tag>.<n>@example.com`. `timing` compares failed
//! logins with a wrong password against ones with an unknown email; it needs
//! `samples` accounts and makes 2 × `samples` failures from this address,
//! which the per-address limit (50 per 15 min) caps at 24.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{LoginRequest, SignUpRequest};

const PASSWORD: &str = "Correct-Horse-9";

fn email(tag: &str, n: usize) -> String {
    format!("bench.{tag}.{n}@example.com")
}

async fn connect(url: &str) -> AuthServiceClient<Channel> {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap_or_else(|e| fail(&format!("url {url:?}: {e}")))
        .connect()
        .await
        .unwrap_or_else(|e| fail(&format!("cannot connect to {url}: {e}")));
    AuthServiceClient::new(channel)
}

fn fail(message: &str) -> ! {
    eprintln!("login_storm: {message}");
    std::process::exit(1)
}

fn number(arg: Option<&String>, name: &str) -> usize {
    arg.and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail(&format!("<{name}> must be a number")))
}

async fn sign_up(url: &str, tag: &str, accounts: usize) {
    let mut tasks = JoinSet::new();
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..accounts.min(16) {
        let (mut client, next, tag) = (connect(url).await, next.clone(), tag.to_owned());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= accounts {
                    return;
                }
                let request = SignUpRequest {
                    email: email(&tag, n),
                    password: PASSWORD.into(),
                    name: format!("Bench {n}"),
                    organization_name: format!("Bench {tag} {n}"),
                };
                if let Err(status) = client.sign_up(request).await {
                    fail(&format!("sign-up {n}: {status:?}"));
                }
            }
        });
    }
    tasks.join_all().await;
    println!("signed up {accounts} accounts");
}

async fn storm(url: &str, tag: &str, accounts: usize, concurrency: usize, logins: usize) {
    // One connection per client, as separate browsers would have.
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(connect(url).await);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let (next, tag) = (next.clone(), tag.to_owned());
        tasks.spawn(async move {
            let mut failures = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= logins {
                    return failures;
                }
                let request = LoginRequest {
                    email: email(&tag, n % accounts),
                    password: PASSWORD.into(),
                };
                if let Err(status) = client.login(request).await {
                    failures.push(status);
                }
            }
        });
    }
    let failures: Vec<_> = tasks.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{logins} logins, {concurrency} concurrent, in {elapsed:.2} s: {:.1} logins/s, {} failed",
        logins as f64 / elapsed,
        failures.len()
    );
    if let Some(first) = failures.first() {
        fail(&format!(
            "{} logins failed, first: {first:?}",
            failures.len()
        ));
    }
}

/// Milliseconds per failed login, for wrong passwords and unknown emails,
/// taken in alternation so both see the same load. Back-to-back hashes
/// alternate between the hashing threads (one per core), so which kind goes
/// first alternates too: a core slowed by its neighbours slows both alike.
async fn timing(url: &str, tag: &str, samples: usize) {
    let mut client = connect(url).await;
    let mut wrong_password = Vec::with_capacity(samples);
    let mut unknown_email = Vec::with_capacity(samples);
    for n in 0..samples {
        let mut pair = [
            (email(tag, n), &mut wrong_password),
            (email(&format!("{tag}-nobody"), n), &mut unknown_email),
        ];
        if n % 2 == 1 {
            pair.reverse();
        }
        for (email, times) in pair {
            let started = Instant::now();
            let answer = client
                .login(LoginRequest {
                    email,
                    password: "Wrong-Horse-1".into(),
                })
                .await;
            let elapsed = started.elapsed();
            match answer {
                Err(status) if status.code() == Code::Unauthenticated => times.push(elapsed),
                other => fail(&format!("expected invalid credentials, got {other:?}")),
            }
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64() * 1000.0
    };
    let mean = |times: &[Duration]| {
        times.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / times.len() as f64
    };
    println!(
        "failed login, {samples} each: wrong password mean {:.2} ms median {:.2} ms; unknown email mean {:.2} ms median {:.2} ms",
        mean(&wrong_password),
        median(&mut wrong_password),
        mean(&unknown_email),
        median(&mut unknown_email),
    );
}

/// Argon2id with Auth's own parameters on one thread per core, nothing
/// else: the ceiling a login rate is compared with.
fn raw_hash_rate(seconds: usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let until = Instant::now() + Duration::from_secs(seconds as u64);
    let started = Instant::now();
    let hashes: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let argon2 = argon2::Argon2::new(
                        argon2::Algorithm::Argon2id,
                        argon2::Version::V0x13,
                        trellis_auth::password::params(),
                    );
                    let mut out = [0u8; 32];
                    let mut count = 0;
                    while Instant::now() < until {
                        argon2
                            .hash_password_into(b"Correct-Horse-9", b"sixteen byte salt", &mut out)
                            .expect("valid input");
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "raw argon2id: {hashes} hashes on {threads} threads in {elapsed:.2} s: {:.1} hashes/s",
        hashes as f64 / elapsed
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("raw") {
        return raw_hash_rate(number(args.get(1), "seconds"));
    }
    let (Some(command), Some(url), Some(tag)) = (args.first(), args.get(1), args.get(2)) else {
        fail(
            "usage: login_storm <sign-up|storm|timing> <url> <tag> ... | login_storm raw <seconds>",
        );
    };
    match command.as_str() {
        "sign-up" => sign_up(url, tag, number(args.get(3), "accounts")).await,
        "storm" => {
            storm(
                url,
                tag,
                number(args.get(3), "accounts"),
                number(args.get(4), "concurrency"),
                number(args.get(5), "logins"),
            )
            .await
        }
        "timing" => timing(url, tag, number(args.get(3), "samples")).await,
        other => fail(&format!("unknown command {other:?}")),
    }
}
