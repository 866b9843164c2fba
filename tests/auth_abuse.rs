//! Auth under abuse: oversized fields, floods, probing, spoofed addresses
//! and races, each against real servers and real clients.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use trellis::auth::v1 as pb;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::organization_service_client::OrganizationServiceClient;
use trellis_auth::{AuthDeps, AuthSettings, KeyStore, Passwords, Throttle, ThrottlePolicy};
use trellis_cli::ServiceName;
use trellis_runtime::ServerLimits;
use trellis_store::{Database, DatabaseOptions, MemoryCounters};

const PASSWORD: &str = "Correct-Horse-9";

fn unique_email(label: &str) -> String {
    format!("{label}.{}@example.com", uuid::Uuid::new_v4().simple())
}

/// A connection whose TCP peer address, as the server sees it, is
/// `127.0.0.<last>`.
async fn channel_from(server: SocketAddr, last: u8) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))))
        .connect()
        .await
        .unwrap()
}

async fn start_auth(extra: &[&str]) -> (trellis_cli::Running, std::path::PathBuf) {
    let data_dir = temp_dir("auth-abuse");
    let running = trellis_cli::start(
        &[ServiceName::Auth, ServiceName::Session],
        &up_args(&data_dir, extra),
    )
    .await
    .unwrap();
    (running, data_dir)
}

fn sign_up_request(email: &str) -> pb::SignUpRequest {
    pb::SignUpRequest {
        email: email.to_owned(),
        password: PASSWORD.into(),
        name: "Ana".into(),
        organization_name: "Taco Palace".into(),
    }
}

fn login_request(email: &str, password: &str) -> pb::LoginRequest {
    pb::LoginRequest {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

#[track_caller]
fn assert_invalid(status: Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, [field], "{status:?}");
    assert!(status.message().starts_with(field), "{}", status.message());
}

#[tokio::test]
async fn every_request_string_is_bounded_before_it_is_used() {
    let (running, data_dir) = start_auth(&[]).await;
    let channel = channel(running.address(ServiceName::Auth).unwrap()).await;
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut orgs = OrganizationServiceClient::new(channel);
    let email = unique_email("admin");
    let admin = auth
        .sign_up(sign_up_request(&email))
        .await
        .unwrap()
        .into_inner();
    let token = &admin.access_token;
    let huge = format!("{}@example.com", "a".repeat(3 << 20));
    let long_email = format!("{}@example.com", "a".repeat(243));
    assert_eq!(long_email.len(), 255);

    let status = auth.login(login_request(&huge, "x")).await.unwrap_err();
    assert_invalid(status, "email");
    let status = auth
        .login(login_request(&email, &"P4ss".repeat(300)))
        .await
        .unwrap_err();
    assert_invalid(status, "password");
    let status = auth
        .sign_up(sign_up_request(&long_email))
        .await
        .unwrap_err();
    assert_invalid(status, "email");
    let status = auth
        .sign_up(pb::SignUpRequest {
            name: "Ana\n2026-11-30 INFO audit: result=\"ok\"".into(),
            ..sign_up_request(&unique_email("forger"))
        })
        .await
        .unwrap_err();
    assert_invalid(status, "name");
    let status = auth
        .sign_up(pb::SignUpRequest {
            organization_name: "x".repeat(201),
            ..sign_up_request(&unique_email("org"))
        })
        .await
        .unwrap_err();
    assert_invalid(status, "organization_name");
    let status = auth
        .refresh(pb::RefreshRequest {
            refresh_token: "r".repeat(300),
        })
        .await
        .unwrap_err();
    assert_invalid(status, "refresh_token");
    let status = orgs
        .accept_invitation(pb::AcceptInvitationRequest {
            token: "t".repeat(300),
            name: "Bo".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_invalid(status, "token");
    let status = orgs
        .invite_user(authed(
            pb::InviteUserRequest {
                email: long_email.clone(),
                role: pb::Role::Viewer as i32,
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_invalid(status, "email");
    let status = orgs
        .update_organization(authed(
            pb::UpdateOrganizationRequest {
                name: "é".repeat(201),
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_invalid(status, "name");
    let status = orgs
        .list_users(authed(
            pb::ListUsersRequest {
                page_size: 10,
                page_token: "p".repeat(600),
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_invalid(status, "page_token");
    // The longest legal email still works, and a login with it is counted.
    let longest = format!("{}@example.com", "b".repeat(242));
    assert_eq!(longest.len(), 254);
    let wrong = auth
        .login(login_request(&longest, "Wrong-Horse-1"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn sign_ups_are_limited_per_address() {
    let (running, data_dir) = start_auth(&["--sign-up-rate", "3/1h"]).await;
    let address = running.address(ServiceName::Auth).unwrap();
    let mut here = AuthServiceClient::new(channel_from(address, 1).await);
    let mut elsewhere = AuthServiceClient::new(channel_from(address, 2).await);
    let first = unique_email("first");
    here.sign_up(sign_up_request(&first)).await.unwrap();
    // A duplicate counts too: each answer tells whether an email exists.
    let duplicate = here.sign_up(sign_up_request(&first)).await.unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    here.sign_up(sign_up_request(&unique_email("second")))
        .await
        .unwrap();
    let throttled = here
        .sign_up(sign_up_request(&unique_email("third")))
        .await
        .unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    assert_eq!(
        throttled.message(),
        "too many sign-ups from this address; retry later"
    );
    let retry = throttled
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(retry > Duration::from_secs(3000), "{retry:?}");
    elsewhere
        .sign_up(sign_up_request(&unique_email("other")))
        .await
        .unwrap();
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

/// A flood of sign-ups (one address at the default limit, or many addresses
/// with it raised) leaves a real user's Login working.
#[tokio::test]
async fn a_sign_up_flood_from_one_address_is_cut_at_the_limit() {
    let (running, data_dir) = start_auth(&[]).await;
    let address = running.address(ServiceName::Auth).unwrap();
    let user = unique_email("real.user");
    AuthServiceClient::new(channel_from(address, 3).await)
        .sign_up(sign_up_request(&user))
        .await
        .unwrap();
    let flooder = AuthServiceClient::new(channel_from(address, 1).await);
    let mut flood = tokio::task::JoinSet::new();
    for n in 0..200 {
        let mut flooder = flooder.clone();
        flood.spawn(async move {
            flooder
                .sign_up(sign_up_request(&unique_email(&format!("flood{n}"))))
                .await
        });
    }
    let started = Instant::now();
    AuthServiceClient::new(channel_from(address, 2).await)
        .login(login_request(&user, PASSWORD))
        .await
        .expect("the real user logs in during the flood");
    loud(&format!(
        "login during a 200-sign-up flood from one address: {:?}",
        started.elapsed()
    ));
    let (mut created, mut throttled) = (0, 0);
    for answer in flood.join_all().await {
        match answer {
            Ok(_) => created += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(status.get_details_retry_info().is_some());
                throttled += 1;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    assert_eq!((created, throttled), (10, 190), "the default: 10 per hour");
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn logins_go_ahead_of_a_sign_up_flood_in_the_hashing_queue() {
    // As if the flood came from many addresses: no per-address limit bites.
    let (running, data_dir) = start_auth(&["--sign-up-rate", "10000/1h"]).await;
    let address = running.address(ServiceName::Auth).unwrap();
    let user = unique_email("real.user");
    let mut real_user = AuthServiceClient::new(channel_from(address, 2).await);
    real_user.sign_up(sign_up_request(&user)).await.unwrap();
    let flooder = AuthServiceClient::new(channel_from(address, 1).await);
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (refused_tx, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let mut flood = tokio::task::JoinSet::new();
    for n in 0..200 {
        let (mut flooder, finished, refused_tx) =
            (flooder.clone(), finished.clone(), refused_tx.clone());
        flood.spawn(async move {
            let answer = flooder
                .sign_up(sign_up_request(&unique_email(&format!("flood{n}"))))
                .await;
            match &answer {
                Ok(_) => {
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Err(status) if status.code() == Code::ResourceExhausted => {
                    let _ = refused_tx.send(());
                }
                Err(status) => panic!("{status:?}"),
            }
            answer.is_ok()
        });
    }
    drop(refused_tx);
    // The new-password queue is full once the first sign-up is turned away.
    tokio::time::timeout(Duration::from_secs(30), refused.recv())
        .await
        .expect("the flood of sign-ups met a bound")
        .expect("some sign-up was refused as busy");
    let started = Instant::now();
    real_user
        .login(login_request(&user, PASSWORD))
        .await
        .expect("a login is never refused for a sign-up flood");
    let done_before_login = finished.load(std::sync::atomic::Ordering::SeqCst);
    loud(&format!(
        "login behind a full queue of sign-up hashes: {:?}",
        started.elapsed()
    ));
    let created = flood.join_all().await.into_iter().filter(|ok| *ok).count();
    assert!(
        done_before_login < created,
        "the login overtook queued sign-ups ({done_before_login} of {created} were done)"
    );
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

/// An Auth server on `database` whose new-password queue holds nothing:
/// every password hash for a new account is refused as busy.
async fn auth_that_cannot_hash_new_passwords(
    data_dir: &std::path::Path,
    database: Database,
) -> TestServer {
    let keys = Arc::new(KeyStore::open(data_dir.join("keys"), true).unwrap());
    let limits = ServerLimits::default();
    let set = trellis_auth::service_set(
        &limits,
        AuthDeps {
            keys: keys.clone(),
            sessions: Arc::new(RecordingSessions::default()),
            database,
            passwords: Arc::new(Passwords::with_queues(1, 16, 0).unwrap()),
            settings: AuthSettings::default(),
            throttle: Throttle::new(
                Arc::new(MemoryCounters::default()),
                ThrottlePolicy::default(),
            ),
        },
    );
    spawn_server(set, verifier_for(&keys.signing_key()).await, limits).await
}

#[tokio::test]
async fn a_registered_email_is_answered_before_any_hashing() {
    let (running, data_dir) = start_auth(&[]).await;
    let channel = channel(running.address(ServiceName::Auth).unwrap()).await;
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut orgs = OrganizationServiceClient::new(channel);
    let taken = unique_email("taken");
    auth.sign_up(sign_up_request(&taken)).await.unwrap();
    let admin = auth
        .sign_up(sign_up_request(&unique_email("admin")))
        .await
        .unwrap()
        .into_inner();
    let invitation = orgs
        .invite_user(authed(
            pb::InviteUserRequest {
                email: taken.clone(),
                role: pb::Role::Viewer as i32,
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();

    let database = Database::connect(
        &trellis_store::default_sqlite_url(&data_dir, "auth"),
        &DatabaseOptions::default(),
    )
    .await
    .unwrap();
    let server = auth_that_cannot_hash_new_passwords(&data_dir, database).await;
    let channel = channel_from(server.address, 1).await;
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut orgs = OrganizationServiceClient::new(channel);
    let busy = auth
        .sign_up(sign_up_request(&unique_email("fresh")))
        .await
        .unwrap_err();
    assert_eq!(
        busy.code(),
        Code::ResourceExhausted,
        "this server cannot hash"
    );
    let duplicate = auth.sign_up(sign_up_request(&taken)).await.unwrap_err();
    assert_eq!(
        (duplicate.code(), duplicate.message()),
        (Code::AlreadyExists, "email already registered")
    );
    let accepted = orgs
        .accept_invitation(pb::AcceptInvitationRequest {
            token: invitation.token,
            name: "Taken".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (accepted.code(), accepted.message()),
        (Code::AlreadyExists, "email already registered")
    );
    server.trigger.trigger();
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn an_invitation_reveals_nothing_about_other_organizations() {
    let (running, data_dir) = start_auth(&[]).await;
    let channel = channel(running.address(ServiceName::Auth).unwrap()).await;
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut orgs = OrganizationServiceClient::new(channel);
    let elsewhere = unique_email("registered.elsewhere");
    auth.sign_up(sign_up_request(&elsewhere)).await.unwrap();
    let admin_email = unique_email("admin");
    let admin = auth
        .sign_up(sign_up_request(&admin_email))
        .await
        .unwrap()
        .into_inner();
    let invite = |email: &str| {
        authed(
            pb::InviteUserRequest {
                email: email.to_owned(),
                role: pb::Role::Viewer as i32,
            },
            &admin.access_token,
        )
    };
    // Registered in another organization or nowhere: the same answer.
    let registered = orgs
        .invite_user(invite(&elsewhere))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let unregistered = orgs
        .invite_user(invite(&unique_email("nobody")))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(registered.status, unregistered.status);
    assert_eq!(registered.role, unregistered.role);
    // Its own members it may know about.
    let member = orgs.invite_user(invite(&admin_email)).await.unwrap_err();
    assert_eq!(
        (member.code(), member.message()),
        (
            Code::AlreadyExists,
            "a member of this organization has this email"
        )
    );
    // Accepting says what a sign-up would, and leaves the invitation pending.
    let refused = orgs
        .accept_invitation(pb::AcceptInvitationRequest {
            token: registered.token.clone(),
            name: "Elsewhere".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::AlreadyExists, "email already registered")
    );
    let still = orgs
        .list_invitations(authed(
            pb::ListInvitationsRequest::default(),
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitations
        .into_iter()
        .find(|i| i.invitation_id == registered.invitation_id)
        .unwrap();
    assert_eq!(still.status, pb::InvitationStatus::Pending as i32);
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

async fn fail_login(auth: &mut AuthServiceClient<Channel>, email: &str, forwarded: &str) -> Code {
    let mut request = tonic::Request::new(login_request(email, "Wrong-Horse-1"));
    request
        .metadata_mut()
        .insert("x-forwarded-for", forwarded.parse().unwrap());
    auth.login(request).await.unwrap_err().code()
}

#[tokio::test]
async fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    let (running, data_dir) = start_auth(&["--trusted-proxies", "127.0.0.2/32"]).await;
    let address = running.address(ServiceName::Auth).unwrap();
    let mut direct = AuthServiceClient::new(channel_from(address, 1).await);
    let mut proxy = AuthServiceClient::new(channel_from(address, 2).await);

    // An untrusted peer cannot pose as a fresh address on every guess.
    let target = unique_email("target");
    for n in 1..=5 {
        let code = fail_login(&mut direct, &target, &format!("203.0.113.{n}")).await;
        assert_eq!(code, Code::Unauthenticated);
    }
    let code = fail_login(&mut direct, &target, "203.0.113.99").await;
    assert_eq!(code, Code::ResourceExhausted, "all counted for 127.0.0.1");

    // Through the trusted proxy, each forwarded client counts apart.
    let other = unique_email("other");
    for _ in 1..=5 {
        let code = fail_login(&mut proxy, &other, "198.51.100.1").await;
        assert_eq!(code, Code::Unauthenticated);
    }
    assert_eq!(
        fail_login(&mut proxy, &other, "198.51.100.1").await,
        Code::ResourceExhausted
    );
    assert_eq!(
        fail_login(&mut proxy, &other, "198.51.100.2").await,
        Code::Unauthenticated,
        "another client behind the same proxy is not locked out"
    );
    // A client cannot prepend its way out: the proxy appended the real peer.
    assert_eq!(
        fail_login(&mut proxy, &other, "10.9.9.9, 198.51.100.1").await,
        Code::ResourceExhausted
    );
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

async fn concurrent_refreshes_of_one_token(extra: &[&str]) {
    let (running, data_dir) = start_auth(extra).await;
    let auth = AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let signed_up = auth
        .clone()
        .sign_up(sign_up_request(&unique_email("racer")))
        .await
        .unwrap()
        .into_inner();
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut auth, token) = (auth.clone(), signed_up.refresh_token.clone());
        racers.spawn(async move {
            auth.refresh(pb::RefreshRequest {
                refresh_token: token,
            })
            .await
        });
    }
    let (mut winners, mut losers) = (Vec::new(), 0);
    for answer in racers.join_all().await {
        match answer {
            Ok(response) => winners.push(response.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                losers += 1;
            }
        }
    }
    assert_eq!((winners.len(), losers), (1, 7), "exactly one exchange wins");
    // The others presented a used token: reuse, so the whole session ended.
    let winner = &winners[0];
    let mut auth = auth.clone();
    let refused = auth
        .refresh(pb::RefreshRequest {
            refresh_token: winner.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let ended = auth
        .who_am_i(authed(pb::WhoAmIRequest {}, &winner.access_token))
        .await
        .unwrap_err();
    assert_eq!(
        (ended.code(), ended.message()),
        (Code::Unauthenticated, "session ended")
    );
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

backend_suite!(concurrent_refreshes_of_one_token, "concurrent refreshes": sqlite, postgres);

async fn concurrent_acceptances_of_one_invitation(extra: &[&str]) {
    let (running, data_dir) = start_auth(extra).await;
    let channel = channel(running.address(ServiceName::Auth).unwrap()).await;
    let admin = AuthServiceClient::new(channel.clone())
        .sign_up(sign_up_request(&unique_email("admin")))
        .await
        .unwrap()
        .into_inner();
    let orgs = OrganizationServiceClient::new(channel);
    let invited = unique_email("invited");
    let token = orgs
        .clone()
        .invite_user(authed(
            pb::InviteUserRequest {
                email: invited.clone(),
                role: pb::Role::Developer as i32,
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap()
        .token;
    let mut racers = tokio::task::JoinSet::new();
    for n in 0..8 {
        let (mut orgs, token) = (orgs.clone(), token.clone());
        racers.spawn(async move {
            orgs.accept_invitation(pb::AcceptInvitationRequest {
                token,
                name: format!("Racer {n}"),
                password: PASSWORD.into(),
            })
            .await
        });
    }
    let mut joined = 0;
    for answer in racers.join_all().await {
        match answer {
            Ok(_) => joined += 1,
            Err(status) => assert!(
                matches!(status.code(), Code::NotFound | Code::AlreadyExists),
                "{status:?}"
            ),
        }
    }
    assert_eq!(joined, 1, "a single-use token makes exactly one user");
    let users = orgs
        .clone()
        .list_users(authed(pb::ListUsersRequest::default(), &admin.access_token))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.iter().filter(|u| u.email == invited).count(), 1);
    assert_eq!(users.len(), 2);
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

backend_suite!(concurrent_acceptances_of_one_invitation, "concurrent invitation acceptances": sqlite, postgres);

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn failed_invitation_calls_are_audit_events() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let writer = captured.clone();
    // The servers run on this test's thread: its subscriber sees their events.
    let _default = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        ),
    );
    let (running, data_dir) = start_auth(&[]).await;
    let channel = channel_from(running.address(ServiceName::Auth).unwrap(), 5).await;
    let admin = AuthServiceClient::new(channel.clone())
        .sign_up(sign_up_request(&unique_email("admin")))
        .await
        .unwrap()
        .into_inner();
    let mut orgs = OrganizationServiceClient::new(channel);
    let bogus = orgs
        .accept_invitation(pb::AcceptInvitationRequest {
            token: "no-such-invitation".into(),
            name: "Mallory".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bogus.code(), Code::NotFound);
    let unknown = uuid::Uuid::new_v4().to_string();
    let missing = orgs
        .revoke_invitation(authed(
            pb::RevokeInvitationRequest {
                invitation_id: unknown.clone(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<&str> = text.lines().filter(|l| l.contains(" audit: ")).collect();
    let accept = audit
        .iter()
        .find(|l| l.contains("event=\"accept_invitation\""))
        .unwrap_or_else(|| panic!("no accept_invitation audit event in {audit:#?}"));
    assert!(accept.contains("result=\"invalid\""), "{accept}");
    assert!(accept.contains("client_address=127.0.0.5"), "{accept}");
    assert!(!accept.contains("no-such-invitation"), "never the token");
    let revoke = audit
        .iter()
        .find(|l| l.contains("event=\"revoke_invitation\""))
        .unwrap_or_else(|| panic!("no revoke_invitation audit event in {audit:#?}"));
    assert!(revoke.contains("result=\"not_found\""), "{revoke}");
    assert!(revoke.contains(&unknown), "{revoke}");
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}
