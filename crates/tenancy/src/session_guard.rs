//! Logout, revocation and role changes reach every server within seconds:
//! each login session's liveness, and its user's current role, are asked of
//! Auth and remembered briefly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use tonic::Status;
use trellis::auth::v1 as pb;
use trellis::auth::v1::{CheckSessionRequest, auth_service_client::AuthServiceClient};
use uuid::Uuid;

use crate::claims::{Principal, Role};
use crate::jwks::BoxFuture;

/// What Auth says of a login session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Live; with the user's role now, when Auth says it.
    Live(Option<Role>),
    Ended,
}

/// Asks whether a login session (or, for a service account's token, the
/// account) is still live.
pub trait SessionCheck: Send + Sync + 'static {
    /// `authorization` is the caller's own bearer header: the check is made
    /// with the caller's credentials, never with a service identity.
    fn check(
        &self,
        principal: &Principal,
        authorization: HeaderValue,
    ) -> BoxFuture<Result<SessionState, Status>>;
}

fn role_of(role: i32) -> Option<Role> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Admin) => Some(Role::Admin),
        Ok(pb::Role::Developer) => Some(Role::Developer),
        Ok(pb::Role::Viewer) => Some(Role::Viewer),
        // An Auth that does not say: the token's claim stands.
        _ => None,
    }
}

/// Asks Auth's `CheckSession`.
pub struct AuthSessionCheck {
    client: AuthServiceClient<tonic::transport::Channel>,
    timeout: Duration,
}

impl AuthSessionCheck {
    pub fn new(channel: tonic::transport::Channel, timeout: Duration) -> Self {
        AuthSessionCheck {
            client: AuthServiceClient::new(channel),
            timeout,
        }
    }
}

impl SessionCheck for AuthSessionCheck {
    fn check(
        &self,
        _: &Principal,
        authorization: HeaderValue,
    ) -> BoxFuture<Result<SessionState, Status>> {
        let mut client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let mut request = tonic::Request::new(CheckSessionRequest {});
            request.set_timeout(timeout);
            let value = tonic::metadata::MetadataValue::try_from(authorization.as_bytes())
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            request.metadata_mut().insert("authorization", value);
            match tokio::time::timeout(timeout, client.check_session(request)).await {
                Ok(Ok(response)) => {
                    let answer = response.into_inner();
                    Ok(if answer.live {
                        SessionState::Live(role_of(answer.role))
                    } else {
                        SessionState::Ended
                    })
                }
                // Only Auth's "not live" ends a session. Any refusal, even
                // UNAUTHENTICATED (an Auth replica that has not loaded a new
                // key yet), is a failed check: never remembered as ended.
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::unavailable("session check timed out")),
            }
        })
    }
}

#[derive(Clone, Copy)]
struct Verdict {
    state: SessionState,
    checked: Instant,
    /// When asking again last failed: for a while after, the verdict is
    /// served without asking, so an unreachable Auth costs one timeout a
    /// session, not one per call.
    failed: Option<Instant>,
}

/// How long after a failed check a recent "live" verdict is served without
/// asking Auth again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What a cached verdict allows right now.
pub(crate) enum Cached {
    Live(Option<Role>),
    Ended,
    /// Unknown or too old: ask.
    Ask,
}

impl Cached {
    /// The verdict, unless Auth must be asked.
    pub(crate) fn known(self) -> Option<SessionState> {
        match self {
            Cached::Live(role) => Some(SessionState::Live(role)),
            Cached::Ended => Some(SessionState::Ended),
            Cached::Ask => None,
        }
    }
}

pub struct SessionGuard {
    check: Arc<dyn SessionCheck>,
    verdicts: quick_cache::sync::Cache<Uuid, Verdict>,
    /// How long a verdict is trusted: the upper bound on logout delay.
    fresh_for: Duration,
    /// How long past `fresh_for` a "live" verdict still serves while Auth
    /// cannot be asked (`--session-check-grace`).
    stale_grace: Duration,
}

impl SessionGuard {
    pub fn new(
        check: Arc<dyn SessionCheck>,
        fresh_for: Duration,
        stale_grace: Duration,
        capacity: usize,
    ) -> Self {
        SessionGuard {
            check,
            verdicts: quick_cache::sync::Cache::new(capacity.max(1)),
            fresh_for,
            stale_grace,
        }
    }

    /// How long a verdict is trusted (`--session-check-ttl`).
    pub(crate) fn fresh_for(&self) -> Duration {
        self.fresh_for
    }

    /// The verdict on a [`Principal::session_key`].
    pub(crate) fn cached(&self, key: &Uuid) -> Cached {
        match self.verdicts.get(key) {
            // An ended session never comes back.
            Some(Verdict {
                state: SessionState::Ended,
                ..
            }) => Cached::Ended,
            Some(Verdict {
                state: SessionState::Live(role),
                checked,
                failed,
            }) if checked.elapsed() < self.fresh_for
                || (failed.is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
                    && checked.elapsed() < self.fresh_for + self.stale_grace) =>
            {
                Cached::Live(role)
            }
            _ => Cached::Ask,
        }
    }

    /// For an open stream: the session's state and when to look again. A
    /// verdict still fresh is taken as it is, so the streams of one session
    /// share one question to Auth per `fresh_for`, and a session that ends
    /// is noticed within `fresh_for` of Auth knowing it.
    pub(crate) async fn recheck(
        &self,
        principal: &Principal,
        authorization: HeaderValue,
    ) -> Result<(SessionState, Instant), Status> {
        let key = principal.session_key();
        if let Some(verdict) = self.verdicts.get(&key) {
            if verdict.state == SessionState::Ended {
                return Ok((SessionState::Ended, Instant::now()));
            }
            if verdict.checked.elapsed() < self.fresh_for {
                return Ok((verdict.state, verdict.checked + self.fresh_for));
            }
        }
        let state = self.ask(principal, authorization).await?;
        // Served from a recent verdict because Auth could not answer: ask
        // again soon rather than a whole `fresh_for` later.
        let served_stale = self
            .verdicts
            .get(&key)
            .is_some_and(|verdict| verdict.failed.is_some());
        let wait = if served_stale {
            RETRY_AFTER_FAILURE.min(self.fresh_for)
        } else {
            self.fresh_for
        };
        Ok((state, Instant::now() + wait))
    }

    /// Asks, and remembers the answer. When Auth cannot answer, a recent
    /// "live" verdict keeps serving for `stale_grace`; otherwise UNAVAILABLE.
    pub(crate) async fn ask(
        &self,
        principal: &Principal,
        authorization: HeaderValue,
    ) -> Result<SessionState, Status> {
        let key = principal.session_key();
        match self.check.check(principal, authorization).await {
            Ok(state) => {
                self.verdicts.insert(
                    key,
                    Verdict {
                        state,
                        checked: Instant::now(),
                        failed: None,
                    },
                );
                Ok(state)
            }
            Err(status) => {
                let recent = self.verdicts.get(&key).filter(|v| {
                    matches!(v.state, SessionState::Live(_))
                        && v.checked.elapsed() < self.fresh_for + self.stale_grace
                });
                if let Some(recent) = recent {
                    tracing::warn!(code = ?status.code(), "session check failed; serving from a recent verdict");
                    self.verdicts.insert(
                        key,
                        Verdict {
                            failed: Some(Instant::now()),
                            ..recent
                        },
                    );
                    Ok(recent.state)
                } else {
                    tracing::warn!(code = ?status.code(), message = status.message(), "session check failed");
                    Err(Status::unavailable(
                        "cannot verify the session right now; retry",
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_one_to_one_and_unknown_ones_leave_the_claim() {
        assert_eq!(role_of(pb::Role::Admin as i32), Some(Role::Admin));
        assert_eq!(role_of(pb::Role::Developer as i32), Some(Role::Developer));
        assert_eq!(role_of(pb::Role::Viewer as i32), Some(Role::Viewer));
        assert_eq!(role_of(pb::Role::Unspecified as i32), None);
        assert_eq!(role_of(99), None);
    }
}
