//! Login sessions in memory for tests of Auth alone: every call is written
//! down, so a test can see what Auth asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use trellis_auth::{LoginSessions, NewLoginSession, SessionsResult};

/// The CSRF token every session of the double has.
pub const CSRF_TOKEN: &str = "test-csrf-token";

#[derive(Default)]
struct Recorded {
    /// session id -> (organization, user, live)
    sessions: HashMap<String, (String, String, bool)>,
    calls: Vec<String>,
}

/// Sessions in memory, with every call written down.
#[derive(Clone, Default)]
pub struct RecordingSessions(Arc<Mutex<Recorded>>);

impl RecordingSessions {
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().calls.clone()
    }

    pub fn live(&self, session_id: &str) -> bool {
        self.0.lock().unwrap().sessions[session_id].2
    }

    /// Records `call` and answers whether the session is live in `org_id`.
    fn ask(&self, call: &str, org_id: &str, session_id: &str) -> bool {
        let mut recorded = self.0.lock().unwrap();
        recorded.calls.push(call.into());
        recorded
            .sessions
            .get(session_id)
            .is_some_and(|(org, _, live)| org == org_id && *live)
    }
}

#[tonic::async_trait]
impl LoginSessions for RecordingSessions {
    async fn open(&self, session: &NewLoginSession) -> SessionsResult<String> {
        let mut recorded = self.0.lock().unwrap();
        recorded.calls.push("open".into());
        recorded.sessions.insert(
            session.id.clone(),
            (session.org_id.clone(), session.user_id.clone(), true),
        );
        Ok(CSRF_TOKEN.to_owned())
    }

    async fn is_live(&self, org_id: &str, session_id: &str) -> SessionsResult<bool> {
        Ok(self.ask("is_live", org_id, session_id))
    }

    async fn touch(&self, org_id: &str, session_id: &str) -> SessionsResult<Option<String>> {
        Ok(self
            .ask("touch", org_id, session_id)
            .then(|| CSRF_TOKEN.to_owned()))
    }

    async fn end(
        &self,
        org_id: &str,
        user_id: &str,
        session_id: &str,
        reason: &str,
    ) -> SessionsResult<bool> {
        let mut recorded = self.0.lock().unwrap();
        recorded.calls.push(format!("end: {reason}"));
        Ok(match recorded.sessions.get_mut(session_id) {
            Some((org, user, live)) if org == org_id && user == user_id => {
                std::mem::replace(live, false)
            }
            _ => false,
        })
    }

    async fn end_all(&self, org_id: &str, user_id: &str, reason: &str) -> SessionsResult<u64> {
        let mut recorded = self.0.lock().unwrap();
        recorded.calls.push(format!("end_all: {reason}"));
        let mut ended = 0;
        for (org, user, live) in recorded.sessions.values_mut() {
            if org == org_id && user == user_id && *live {
                *live = false;
                ended += 1;
            }
        }
        Ok(ended)
    }
}
