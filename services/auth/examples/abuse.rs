//! Hostile client of `bench/abuse.sh`: what an attacker at one address can
//! do to Auth, every answer's status checked.
//!
//! ```text
//! abuse huge-email      <url> <calls> <mib>      Login with an email of <mib> MiB
//! abuse distinct-emails <url> <calls>            failed logins, a new email each
//! abuse flood           <url> <sign-ups>         sign-ups at once while a user logs in
//! ```
//!
//! The flood comes from 127.0.0.1 and the real user from 127.0.0.2, so the
//! user is a different client to the server's per-address limits.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{LoginRequest, SignUpRequest};

const PASSWORD: &str = "Correct-Horse-9";

fn fail(message: &str) -> ! {
    eprintln!("abuse: {message}");
    std::process::exit(1)
}

fn number(arg: Option<&String>, name: &str) -> usize {
    arg.and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail(&format!("<{name}> must be a number")))
}

async fn connect(url: &str) -> AuthServiceClient<Channel> {
    connect_from(url, None).await
}

async fn connect_from(url: &str, local: Option<std::net::IpAddr>) -> AuthServiceClient<Channel> {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap_or_else(|e| fail(&format!("url {url:?}: {e}")))
        .local_address(local)
        .connect()
        .await
        .unwrap_or_else(|e| fail(&format!("cannot connect to {url}: {e}")));
    AuthServiceClient::new(channel).max_encoding_message_size(64 << 20)
}

fn login(email: String) -> LoginRequest {
    LoginRequest {
        email,
        password: "Wrong-Horse-1".into(),
    }
}

/// Tallies answers by status code.
#[derive(Default)]
struct Codes(Vec<(Code, usize)>);

impl Codes {
    fn add(&mut self, code: Code) {
        match self.0.iter_mut().find(|(seen, _)| *seen == code) {
            Some((_, count)) => *count += 1,
            None => self.0.push((code, 1)),
        }
    }

    fn only(&self, expected: &[Code]) {
        if let Some((code, count)) = self.0.iter().find(|(code, _)| !expected.contains(code)) {
            fail(&format!("{count} answers were {code:?}"));
        }
    }
}

impl std::fmt::Display for Codes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(code, count)| format!("{count} {code:?}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

async fn huge_email(url: &str, calls: usize, mib: usize) {
    let mut client = connect(url).await;
    let email = format!("{}@example.com", "a".repeat(mib << 20));
    let mut codes = Codes::default();
    for _ in 0..calls {
        match client.login(login(email.clone())).await {
            Ok(_) => fail("a login with a huge email succeeded"),
            Err(status) => codes.add(status.code()),
        }
    }
    codes.only(&[Code::InvalidArgument]);
    println!("{calls} logins with a {mib} MiB email: {codes}");
}

async fn distinct_emails(url: &str, calls: usize) {
    let mut client = connect(url).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut codes = Codes::default();
    for n in 0..calls {
        match client
            .login(login(format!("ghost.{tag}.{n}@example.com")))
            .await
        {
            Ok(_) => fail("a login with a made-up email succeeded"),
            Err(status) => codes.add(status.code()),
        }
    }
    codes.only(&[Code::Unauthenticated, Code::ResourceExhausted]);
    println!("{calls} failed logins with distinct emails from one address: {codes}");
}

/// How long a successful login of `email` takes.
async fn timed_login(client: &mut AuthServiceClient<Channel>, email: &str) -> Duration {
    let sent = Instant::now();
    client
        .login(LoginRequest {
            email: email.to_owned(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_or_else(|status| fail(&format!("the real user cannot log in: {status:?}")));
    sent.elapsed()
}

/// `sign_ups` sign-ups sent at once from one connection while a real user
/// logs in over another, one login after the other, until the flood is over.
async fn flood(url: &str, sign_ups: usize) {
    let flooder = connect_from(url, Some([127, 0, 0, 1].into())).await;
    let mut real_user = connect_from(url, Some([127, 0, 0, 2].into())).await;
    let email = format!("real.{}@example.com", uuid::Uuid::new_v4().simple());
    real_user
        .sign_up(SignUpRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            name: "Real".into(),
            organization_name: "Real".into(),
        })
        .await
        .unwrap_or_else(|status| fail(&format!("the real user cannot sign up: {status:?}")));
    let email = email.as_str();
    let login_latency = |latencies: &mut Vec<Duration>| {
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "min {:.1} ms, median {:.1} ms, max {:.1} ms",
            ms(latencies[0]),
            ms(latencies[latencies.len() / 2]),
            ms(*latencies.last().unwrap())
        )
    };
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(timed_login(&mut real_user, email).await);
    }
    println!(
        "10 logins of the real user, no flood: {}",
        login_latency(&mut idle)
    );
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut flood = JoinSet::new();
    for n in 0..sign_ups {
        let mut flooder = flooder.clone();
        let tag = tag.clone();
        flood.spawn(async move {
            flooder
                .sign_up(SignUpRequest {
                    email: format!("flood.{tag}.{n}@example.com"),
                    password: PASSWORD.into(),
                    name: "Flood".into(),
                    organization_name: format!("Flood {n}"),
                })
                .await
                .map(drop)
                .map_err(|status| status.code())
        });
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut answers = Vec::new();
    while !flood.is_empty() {
        latencies.push(timed_login(&mut real_user, email).await);
        while let Some(done) = flood.try_join_next() {
            answers.push(done.unwrap_or_else(|e| fail(&format!("sign-up task: {e}"))));
        }
    }
    let flood_time = started.elapsed();
    let mut codes = Codes::default();
    for answer in answers {
        codes.add(answer.err().unwrap_or(Code::Ok));
    }
    codes.only(&[Code::Ok, Code::ResourceExhausted]);
    println!(
        "{sign_ups} sign-ups at once ({codes}) in {:.2} s; meanwhile {} logins of the real user, all OK: {}",
        flood_time.as_secs_f64(),
        latencies.len(),
        login_latency(&mut latencies)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(command), Some(url)) = (args.first(), args.get(1)) else {
        fail("usage: abuse <huge-email|distinct-emails|flood> <url> ...");
    };
    match command.as_str() {
        "huge-email" => {
            huge_email(
                url,
                number(args.get(2), "calls"),
                number(args.get(3), "mib"),
            )
            .await
        }
        "distinct-emails" => distinct_emails(url, number(args.get(2), "calls")).await,
        "flood" => flood(url, number(args.get(2), "sign-ups")).await,
        other => fail(&format!("unknown command {other:?}")),
    }
}
