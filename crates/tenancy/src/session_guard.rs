//! Logout, revocation and role changes reach every server within seconds:
//! each login session's liveness, and its user's current role, are asked of
//! Auth and remembered briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::watch;
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
    /// Sessions being asked about for open streams, with their answer to
    /// come. Holds only questions in flight: bounded by open streams.
    asking: Mutex<HashMap<Uuid, AnswerSender>>,
}

type AnswerSender = watch::Sender<Option<Result<(SessionState, Instant), Status>>>;

/// A question in flight; leaves the map when answered or dropped.
struct Asking<'a> {
    guard: &'a SessionGuard,
    key: Uuid,
}

impl Asking<'_> {
    fn answer(self, result: Result<(SessionState, Instant), Status>) {
        let asking = self.guard.asking.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(answer) = asking.get(&self.key) {
            answer.send_replace(Some(result));
        }
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut asking = self.guard.asking.lock().unwrap_or_else(|e| e.into_inner());
        asking.remove(&self.key);
    }
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
            asking: Mutex::new(HashMap::new()),
        }
    }

    /// The verdict on a [`Principal::session_key`].
    pub(crate) fn cached(&self, key: &Uuid) -> Cached {
        match self.usable_verdict(key) {
            Some((SessionState::Live(role), _)) => Cached::Live(role),
            Some((SessionState::Ended, _)) => Cached::Ended,
            None => Cached::Ask,
        }
    }

    /// The remembered verdict, if it may be used now, and until when.
    fn usable_verdict(&self, key: &Uuid) -> Option<(SessionState, Instant)> {
        let verdict = self.verdicts.get(key)?;
        match verdict.state {
            // An ended session never comes back.
            SessionState::Ended => Some((SessionState::Ended, Instant::now())),
            SessionState::Live(_) if verdict.checked.elapsed() < self.fresh_for => {
                Some((verdict.state, verdict.checked + self.fresh_for))
            }
            SessionState::Live(_) => {
                let failed = verdict.failed?;
                (failed.elapsed() < RETRY_AFTER_FAILURE
                    && verdict.checked.elapsed() < self.fresh_for + self.stale_grace)
                    .then_some((verdict.state, failed + RETRY_AFTER_FAILURE))
            }
        }
    }

    /// When an open stream admitted just now should look at its session
    /// again: when the verdict it was admitted on goes stale.
    pub(crate) fn next_check(&self, key: &Uuid) -> Instant {
        self.usable_verdict(key)
            .map_or_else(Instant::now, |(_, until)| until)
    }

    /// For an open stream: the session's state and when to look again. A
    /// usable verdict is taken as it is, and only one question per session
    /// is in flight at a time (the streams of a session that wake together
    /// wait for it), so Auth is asked about a session at most once per
    /// `fresh_for` (once a second while it cannot answer), however many
    /// streams it has.
    pub(crate) async fn recheck(
        &self,
        principal: &Principal,
        authorization: HeaderValue,
    ) -> Result<(SessionState, Instant), Status> {
        let key = principal.session_key();
        loop {
            if let Some(usable) = self.usable_verdict(&key) {
                return Ok(usable);
            }
            let waiting = {
                let mut asking = self.asking.lock().unwrap_or_else(|e| e.into_inner());
                match asking.get(&key) {
                    // A receiver, never the sender: only the asker's entry
                    // keeps the channel open.
                    Some(answer) => Some(answer.subscribe()),
                    None => {
                        let (answer, _) = watch::channel(None);
                        asking.insert(key, answer);
                        None
                    }
                }
            };
            let Some(answer) = waiting else {
                let question = Asking { guard: self, key };
                let result = self.ask(principal, authorization.clone()).await;
                let next = self
                    .usable_verdict(&key)
                    .map_or_else(Instant::now, |(_, until)| until);
                let result = result.map(|state| (state, next));
                question.answer(result.clone());
                return result;
            };
            let mut answers = answer;
            // An error if the asker went away before it had an answer: look
            // again, and ask if still nobody does.
            if let Ok(answered) = answers.wait_for(Option::is_some).await
                && let Some(result) = answered.clone()
            {
                return result;
            }
        }
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
