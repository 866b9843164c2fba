//! The gateway in front of `trellis up`: plain gRPC and gRPC-web over
//! HTTP/1.1 routed to the owning server, internal RPCs unreachable, CORS
//! from the allow-list only, cookie mode (cookies set, bearer from the
//! cookie, CSRF on state changes, Refresh from the cookie, Logout clears),
//! the HTTP endpoints, and login throttling per real client behind it.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use base64::Engine as _;
use common::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::metadata::MetadataValue;
use trellis::auth::v1::auth_service_client::AuthServiceClient;
use trellis::auth::v1::{LoginRequest, LogoutRequest, RefreshRequest, WhoAmIRequest};
use trellis::session::v1::session_service_client::SessionServiceClient;
use trellis::session::v1::{CheckSessionsRequest, CreateSessionRequest};
use trellis_cli::ServiceName;

const ORIGIN: &str = "http://shop.test";

fn with_metadata<T>(message: T, pairs: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (key, value) in pairs {
        request
            .metadata_mut()
            .append(*key, MetadataValue::try_from(*value).unwrap());
    }
    request
}

/// `name=value` of each Set-Cookie, attributes dropped.
fn set_cookies(metadata: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    metadata
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

fn cookie(cookies: &[(String, String)], name: &str) -> String {
    cookies
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"))
}

/// One HTTP/1.1 exchange from `from` (a loopback address of its own, so
/// the gateway sees distinct clients), read to the end.
async fn http1(gateway: SocketAddr, from: Ipv4Addr, request: &[u8]) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(gateway).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn grpc_web_post(path: &str, message: &impl Message, headers: &str) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut body = vec![0];
    body.extend((encoded.len() as u32).to_be_bytes());
    body.extend(encoded);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend(body);
    request
}

/// The grpc-status of a gRPC-web answer: in the headers (trailers-only) or
/// in the trailer frame at the end of the body.
fn grpc_web_status(answer: &str) -> Option<i32> {
    let lower = answer.to_ascii_lowercase();
    let at = lower.rfind("grpc-status:")?;
    let digits: String = lower[at + "grpc-status:".len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[tokio::test]
async fn the_gateway_routes_guards_and_keeps_browser_sessions_in_cookies() {
    let data_dir = temp_dir("gateway");
    let args = trellis_cli::for_up(&up_args(
        &data_dir,
        &[&format!("--gateway-allowed-origins={ORIGIN}")],
    ));
    let running = trellis_cli::start(&ServiceName::ALL, &args).await.unwrap();
    let gateway = running.address(ServiceName::Gateway).unwrap();
    let through = channel(gateway).await;
    let mut auth = AuthServiceClient::new(through.clone());

    // Plain gRPC through the gateway; the response sets the cookies.
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("gina.{unique}@example.com");
    let signed_up = auth
        .sign_up(trellis::auth::v1::SignUpRequest {
            email: email.clone(),
            password: "Correct-Horse-9".into(),
            name: "Gina".into(),
            organization_name: format!("Gateway Tacos {unique}"),
        })
        .await
        .unwrap();
    let cookies = set_cookies(signed_up.metadata());
    let signed_up = signed_up.into_inner();
    assert_eq!(cookie(&cookies, "trellis-access"), signed_up.access_token);
    assert_eq!(cookie(&cookies, "trellis-refresh"), signed_up.refresh_token);
    // The CSRF cookie names its login session.
    let csrf_cookie = cookie(&cookies, "trellis-csrf");
    assert_eq!(
        csrf_cookie,
        format!("{}.{}", signed_up.session_id, signed_up.csrf_token)
    );
    let access = format!("trellis-access={}", signed_up.access_token);
    let all_cookies = format!(
        "{access}; trellis-refresh={}; trellis-csrf={csrf_cookie}",
        signed_up.refresh_token
    );

    // A refusal of an auth call comes through as itself, over plain gRPC
    // as over gRPC-web (trailers-only answers end with their headers).
    let wrong = auth
        .login(LoginRequest {
            email: email.clone(),
            password: "Wrong-Horse-9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let bogus = auth
        .refresh(RefreshRequest {
            refresh_token: "bogus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bogus.code(), Code::Unauthenticated, "{bogus:?}");

    // A bearer call needs no cookie and no CSRF token.
    let bearer = format!("Bearer {}", signed_up.access_token);
    let mut sessions = SessionServiceClient::new(through.clone());
    sessions
        .create_session(with_metadata(
            CreateSessionRequest::default(),
            &[("authorization", &bearer)],
        ))
        .await
        .unwrap();

    // By cookie: reads pass; a state change needs the CSRF token.
    let me = auth
        .who_am_i(with_metadata(WhoAmIRequest {}, &[("cookie", &access)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.user.unwrap().email, email);
    let refused = sessions
        .create_session(with_metadata(
            CreateSessionRequest::default(),
            &[("cookie", &all_cookies)],
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let wrong = sessions
        .create_session(with_metadata(
            CreateSessionRequest::default(),
            &[("cookie", &all_cookies), ("x-csrf-token", "not-the-token")],
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied);
    sessions
        .create_session(with_metadata(
            CreateSessionRequest::default(),
            &[
                ("cookie", &all_cookies),
                ("x-csrf-token", &signed_up.csrf_token),
            ],
        ))
        .await
        .unwrap();

    // Internal RPCs do not exist from outside, whatever the token.
    let internal = sessions
        .check_sessions(with_metadata(
            CheckSessionsRequest::default(),
            &[("authorization", &bearer)],
        ))
        .await
        .unwrap_err();
    assert_eq!(internal.code(), Code::NotFound, "{internal:?}");

    // Refresh with an empty body takes the refresh cookie.
    let refreshed = auth
        .refresh(with_metadata(
            RefreshRequest::default(),
            &[("cookie", &all_cookies)],
        ))
        .await
        .unwrap();
    let cookies = set_cookies(refreshed.metadata());
    let refreshed = refreshed.into_inner();
    assert_ne!(refreshed.refresh_token, signed_up.refresh_token);
    assert_eq!(cookie(&cookies, "trellis-refresh"), refreshed.refresh_token);

    // A CSRF cookie of another login session vouches for nothing.
    let other = auth
        .login(LoginRequest {
            email: email.clone(),
            password: "Correct-Horse-9".into(),
        })
        .await
        .unwrap();
    let other_csrf = cookie(&set_cookies(other.metadata()), "trellis-csrf");
    let other = other.into_inner();
    let mixed = sessions
        .create_session(with_metadata(
            CreateSessionRequest::default(),
            &[
                (
                    "cookie",
                    &format!(
                        "trellis-access={}; trellis-csrf={other_csrf}",
                        refreshed.access_token
                    ),
                ),
                ("x-csrf-token", &other.csrf_token),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(mixed.code(), Code::PermissionDenied, "{mixed:?}");

    // Headers the servers would refuse are refused here, and the shared
    // connection to the server goes on serving.
    let padding = "x".repeat(100 * 1024);
    let too_big = auth
        .who_am_i(with_metadata(
            WhoAmIRequest {},
            &[("authorization", &bearer), ("x-pad", &padding)],
        ))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::ResourceExhausted, "{too_big:?}");
    auth.who_am_i(with_metadata(
        WhoAmIRequest {},
        &[("authorization", &bearer)],
    ))
    .await
    .unwrap();

    // Logout by cookie (with its CSRF token) clears the cookies.
    let cookies_now = format!(
        "trellis-access={}; trellis-csrf={}",
        refreshed.access_token,
        cookie(&cookies, "trellis-csrf")
    );
    let logged_out = auth
        .logout(with_metadata(
            LogoutRequest {},
            &[
                ("cookie", &cookies_now),
                ("x-csrf-token", &refreshed.csrf_token),
            ],
        ))
        .await
        .unwrap();
    let cleared = set_cookies(logged_out.metadata());
    assert_eq!(cleared.len(), 3, "{cleared:?}");
    assert!(cleared.iter().all(|(_, value)| value.is_empty()));

    // gRPC-web over HTTP/1.1 from a browser: the tokens are in cookies
    // only, and an allowed origin gets its CORS grant.
    let login = LoginRequest {
        email: email.clone(),
        password: "Correct-Horse-9".into(),
    };
    let answer = http1(
        gateway,
        Ipv4Addr::new(127, 0, 0, 1),
        &grpc_web_post(
            "/trellis.auth.v1.AuthService/Login",
            &login,
            &format!("Origin: {ORIGIN}\r\n"),
        ),
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    assert_eq!(grpc_web_status(&answer), Some(0), "{answer}");
    assert!(
        lower.contains("content-type: application/grpc-web+proto"),
        "{answer}"
    );
    assert!(
        lower.contains(&format!("access-control-allow-origin: {ORIGIN}")),
        "{answer}"
    );
    assert!(
        lower.contains("access-control-allow-credentials: true"),
        "{answer}"
    );
    assert!(lower.contains("set-cookie: trellis-access="), "{answer}");
    let at =
        lower.find("set-cookie: trellis-access=").unwrap() + "set-cookie: trellis-access=".len();
    let token: String = answer[at..].chars().take_while(|c| *c != ';').collect();
    assert_eq!(
        answer.matches(&token).count(),
        1,
        "the token is in the cookie only"
    );

    // gRPC-web text (base64 both ways), as some browser clients send it.
    let mut text_request = grpc_web_post(
        "/trellis.auth.v1.AuthService/Login",
        &login,
        "Accept: application/grpc-web-text\r\n",
    );
    let body_at = text_request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&text_request[body_at..]);
    text_request.truncate(body_at);
    let head = String::from_utf8(text_request)
        .unwrap()
        .replace("application/grpc-web+proto", "application/grpc-web-text")
        .replace(
            &format!("Content-Length: {}", 5 + login.encoded_len()),
            &format!("Content-Length: {}", encoded.len()),
        );
    let answer = http1(
        gateway,
        Ipv4Addr::LOCALHOST,
        format!("{head}{encoded}").as_bytes(),
    )
    .await;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/grpc-web-text"),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let decoded: Vec<u8> = body
        .split("\r\n")
        .filter(|chunk| chunk.len() > 8 && !chunk.chars().all(|c| c.is_ascii_hexdigit()))
        .flat_map(|chunk| {
            base64::engine::general_purpose::STANDARD
                .decode(chunk)
                .unwrap_or_default()
        })
        .collect();
    assert!(
        String::from_utf8_lossy(&decoded).contains("grpc-status:0"),
        "{answer}"
    );

    // Status details travel through: a weak password's BadRequest.
    let weak = auth
        .sign_up(trellis::auth::v1::SignUpRequest {
            email: format!("weak.{unique}@example.com"),
            password: "short".into(),
            name: "Weak".into(),
            organization_name: format!("Weak {unique}"),
        })
        .await
        .unwrap_err();
    assert_eq!(weak.code(), Code::InvalidArgument);
    assert!(
        !weak.details().is_empty(),
        "grpc-status-details-bin through the gateway"
    );

    // Preflight: answered by the gateway; a disallowed origin gets no grant.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /trellis.auth.v1.AuthService/Login HTTP/1.1\r\nHost: gateway\r\n\
             Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type,x-grpc-web,x-csrf-token\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let granted = http1(gateway, Ipv4Addr::LOCALHOST, preflight(ORIGIN).as_bytes()).await;
    assert!(
        granted
            .to_ascii_lowercase()
            .contains(&format!("access-control-allow-origin: {ORIGIN}")),
        "{granted}"
    );
    let denied = http1(
        gateway,
        Ipv4Addr::LOCALHOST,
        preflight("http://evil.test").as_bytes(),
    )
    .await;
    assert!(
        !denied
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{denied}"
    );

    // The HTTP endpoints.
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
    let health = http1(gateway, Ipv4Addr::LOCALHOST, get("/healthz").as_bytes()).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http1(gateway, Ipv4Addr::LOCALHOST, get("/readyz").as_bytes()).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let jwks = http1(
        gateway,
        Ipv4Addr::LOCALHOST,
        get("/.well-known/jwks.json").as_bytes(),
    )
    .await;
    assert!(
        jwks.starts_with("HTTP/1.1 200") && jwks.contains("\"kty\""),
        "{jwks}"
    );

    // 60 failed logins from one client behind the gateway throttle that
    // client (Auth believes the address the gateway forwards) and not
    // another one.
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let mut failures = tokio::task::JoinSet::new();
    for n in 0..60 {
        let request = grpc_web_post(
            "/trellis.auth.v1.AuthService/Login",
            &LoginRequest {
                email: format!("nobody.{n}.{unique}@example.com"),
                password: "Wrong-Horse-9".into(),
            },
            "",
        );
        failures.spawn(async move { http1(gateway, attacker, &request).await });
    }
    while let Some(answer) = failures.join_next().await {
        let code = grpc_web_status(&answer.unwrap());
        assert!(matches!(code, Some(16) | Some(8)), "{code:?}");
    }
    let throttled = http1(
        gateway,
        attacker,
        &grpc_web_post("/trellis.auth.v1.AuthService/Login", &login, ""),
    )
    .await;
    assert_eq!(
        grpc_web_status(&throttled),
        Some(Code::ResourceExhausted as i32),
        "{throttled}"
    );
    let other = http1(
        gateway,
        Ipv4Addr::new(127, 0, 0, 3),
        &grpc_web_post("/trellis.auth.v1.AuthService/Login", &login, ""),
    )
    .await;
    assert_eq!(grpc_web_status(&other), Some(0), "{other}");

    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}

/// Server streams go through as events happen; each client address and
/// each organization has its own allowance (RESOURCE_EXHAUSTED for RPCs,
/// HTTP 429 for the HTTP endpoints).
#[tokio::test]
async fn the_gateway_streams_events_and_limits_each_client() {
    use trellis::execution::v1 as exec;
    use trellis::execution::v1::execution_service_client::ExecutionServiceClient;

    let data_dir = temp_dir("gateway-limits");
    let args = trellis_cli::for_up(&up_args(&data_dir, &["--gateway-client-rate=1"]));
    let running = trellis_cli::start(&ServiceName::ALL, &args).await.unwrap();
    let gateway = running.address(ServiceName::Gateway).unwrap();
    let direct = channel(running.address(ServiceName::Execution).unwrap()).await;
    let mut auth =
        AuthServiceClient::new(channel(running.address(ServiceName::Auth).unwrap()).await);
    let user = sign_up(&mut auth, "streamer").await;
    let bearer = format!("Bearer {}", user.access_token);

    // A stream opened through the gateway (from 127.0.0.1) sees a change
    // made directly on the Execution server.
    let mut through = ExecutionServiceClient::new(channel(gateway).await);
    let mut events = through
        .watch_executions(with_metadata(
            exec::WatchExecutionsRequest::default(),
            &[("authorization", &bearer)],
        ))
        .await
        .unwrap()
        .into_inner();
    let created = ExecutionServiceClient::new(direct)
        .create_execution(with_metadata(
            exec::CreateExecutionRequest {
                queue: "gateway".into(),
                image: "alpine".into(),
                ..Default::default()
            },
            &[("authorization", &bearer)],
        ))
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.message())
        .await
        .expect("the event arrives through the gateway")
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    assert_eq!(event.execution.unwrap().execution_id, created.execution_id);

    // One call a second, bursts of two: a client at 127.0.0.4 runs out,
    // one at 127.0.0.5 does not; the HTTP endpoints answer 429 alike.
    let hungry = Ipv4Addr::new(127, 0, 0, 4);
    let who_am_i = |from| {
        let request = grpc_web_post(
            "/trellis.auth.v1.AuthService/WhoAmI",
            &WhoAmIRequest {},
            &format!("Authorization: {bearer}\r\n"),
        );
        async move { grpc_web_status(&http1(gateway, from, &request).await) }
    };
    assert_eq!(who_am_i(hungry).await, Some(0));
    assert_eq!(who_am_i(hungry).await, Some(0));
    let mut refused = false;
    for _ in 0..5 {
        let code = who_am_i(hungry).await;
        assert!(matches!(code, Some(0) | Some(8)), "{code:?}");
        if code == Some(Code::ResourceExhausted as i32) {
            refused = true;
            break;
        }
    }
    assert!(refused, "the third call within a second is over the limit");
    let health = http1(
        gateway,
        hungry,
        b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 429"), "{health}");
    assert_eq!(who_am_i(Ipv4Addr::new(127, 0, 0, 5)).await, Some(0));

    drop(events);
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}
