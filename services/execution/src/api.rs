//! The handlers of ExecutionService (users, scoped by organization) and
//! WorkerService (workers of every organization, by lease), over the queue
//! in [`crate::store`].

use std::collections::HashMap;
use std::time::Duration;

use trellis::execution::v1 as pb;
use trellis_runtime::time::{millis, now_ms, timestamp};
use trellis_store::Page;
use trellis_tenancy::{Role, TenantContext};
use uuid::Uuid;

use crate::error::{ExecutionServiceError, Result};
use crate::limits::PlanLimits;
use crate::store::{
    Appended, Cancelled, Created, Deleted, ExecutionRecord, LeaseAsk, MonthAllowance, Queue, Spec,
    State,
};

pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
const MAX_NAME_BYTES: usize = 64;
const MAX_IMAGE_BYTES: usize = 256;
const MAX_ARGS: usize = 64;
const MAX_ARG_BYTES: usize = 4096;
const MAX_FOLDER_BYTES: usize = 1024;
const MAX_TESTS: usize = 1000;
const MAX_TEST_BYTES: usize = 512;
const MAX_CONFIG_ENTRIES: usize = 64;
const MAX_CONFIG_KEY_BYTES: usize = 128;
const MAX_CONFIG_VALUE_BYTES: usize = 4096;
const MAX_KEY_BYTES: usize = 128;
const MAX_ERROR_BYTES: usize = 4096;
const MAX_ANALYSIS_BYTES: usize = 64 * 1024;
const MAX_QUEUES_PER_LEASE: usize = 32;
const MAX_LINES_PER_APPEND: usize = 500;
/// Queues of the platform's own work (order fulfillment).
const RESERVED_QUEUE_PREFIX: &str = "trellis.";
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Retries wait 5 s, doubling per attempt (with jitter).
pub const RETRY_BASE: Duration = Duration::from_secs(5);

pub struct ExecutionApi {
    pub queue: Queue,
    pub limits: PlanLimits,
}

pub(crate) fn id(field: &str, value: &str) -> Result<Uuid> {
    if value.is_empty() {
        return Err(ExecutionServiceError::invalid(field, "required"));
    }
    Uuid::parse_str(value).map_err(|_| ExecutionServiceError::invalid(field, "must be a UUID"))
}

pub(crate) fn name(field: &str, value: &str) -> Result<String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !ok {
        return Err(ExecutionServiceError::invalid(
            field,
            format!("must be 1 to {MAX_NAME_BYTES} bytes of letters, digits and - _ . :"),
        ));
    }
    Ok(value.to_owned())
}

/// Printable text of at most `max` bytes.
fn text(field: &str, value: &str, max: usize, required: bool) -> Result<String> {
    if required && value.is_empty() {
        return Err(ExecutionServiceError::invalid(field, "required"));
    }
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(ExecutionServiceError::invalid(
            field,
            format!("at most {max} bytes, without control characters"),
        ));
    }
    Ok(value.to_owned())
}

fn texts(field: &str, values: &[String], count: usize, each: usize) -> Result<Vec<String>> {
    if values.len() > count {
        return Err(ExecutionServiceError::invalid(
            field,
            format!("at most {count} entries"),
        ));
    }
    values.iter().map(|v| text(field, v, each, false)).collect()
}

fn writer(tenant: &TenantContext) -> Result<()> {
    match tenant.role {
        Role::Admin | Role::Developer => Ok(()),
        Role::Viewer => Err(ExecutionServiceError::WriteRoleRequired),
    }
}

/// The platform's own executions (order fulfillment) carry other users'
/// orders: admins see them, other members do not.
pub(crate) fn sees_platform_work(tenant: &TenantContext) -> bool {
    tenant.role == Role::Admin
}

/// The organization's execution, if this member may see it.
pub(crate) async fn visible(
    queue: &Queue,
    tenant: &TenantContext,
    execution_id: Uuid,
) -> Result<ExecutionRecord> {
    match queue.get(tenant.org_id, execution_id).await? {
        Some(e) if !e.system || sees_platform_work(tenant) => Ok(e),
        _ => Err(ExecutionServiceError::NotFound(execution_id)),
    }
}

/// The first millisecond of the UTC calendar month `now_ms` falls in.
pub fn month_start(now_ms: i64) -> i64 {
    let days = now_ms.div_euclid(86_400_000);
    // Howard Hinnant's civil-from-days, to the first of the month.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5 + 1;
    (days - (day_of_month - 1)) * 86_400_000
}

/// 5 s × 2^(attempt-1), between half and all of it again (jitter), so
/// retries of executions that failed together spread out.
pub fn retry_in_ms(attempt: i64) -> i64 {
    let exponent = u32::try_from(attempt.clamp(1, 20) - 1).unwrap_or(0);
    let base = millis(RETRY_BASE).saturating_mul(1_i64 << exponent);
    base / 2 + (rand_fraction() * base as f64) as i64
}

fn rand_fraction() -> f64 {
    f64::from(rand::random::<u32>()) / f64::from(u32::MAX)
}

pub(crate) fn state_of(status: i32) -> Option<State> {
    use pb::ExecutionStatus as S;
    Some(match S::try_from(status).ok()? {
        S::Unspecified => return None,
        S::Pending => State::Pending,
        S::Running => State::Running,
        S::Passed => State::Passed,
        S::Failed => State::Failed,
        S::Error => State::Error,
        S::Unstable => State::Unstable,
        S::Analyzing => State::Analyzing,
        S::Cancelled => State::Cancelled,
    })
}

fn status_of(state: State) -> pb::ExecutionStatus {
    use pb::ExecutionStatus as S;
    match state {
        State::Pending => S::Pending,
        State::Running => S::Running,
        State::Passed => S::Passed,
        State::Failed => S::Failed,
        State::Error => S::Error,
        State::Unstable => S::Unstable,
        State::Analyzing => S::Analyzing,
        State::Cancelled => S::Cancelled,
    }
}

pub fn execution_message(e: &ExecutionRecord) -> pb::Execution {
    pb::Execution {
        execution_id: e.id.to_string(),
        organization_id: e.org_id.to_string(),
        created_by: e.created_by.to_string(),
        queue: e.queue.clone(),
        status: status_of(e.state) as i32,
        attempt: e.attempt as i32,
        max_attempts: e.max_attempts as i32,
        image: e.spec.image.clone(),
        command: e.spec.command.clone(),
        folder: e.spec.folder.clone(),
        tests: e.spec.tests.clone(),
        config: e.spec.config.clone().into_iter().collect::<HashMap<_, _>>(),
        payload: e.payload.clone(),
        output: e.output.clone(),
        error: e.error.clone(),
        analysis: e.analysis.clone(),
        created_at: Some(timestamp(e.created_at)),
        started_at: e.started_at.map(timestamp),
        finished_at: e.finished_at.map(timestamp),
        next_attempt_at: (e.state == State::Pending && e.attempt > 0)
            .then(|| timestamp(e.next_attempt_at)),
        priority: e.priority as i32,
        cancel_requested: e.cancel_requested,
    }
}

fn leased_message(e: &ExecutionRecord) -> pb::LeasedExecution {
    pb::LeasedExecution {
        lease_id: e.lease_id.map(|l| l.to_string()).unwrap_or_default(),
        organization_id: e.org_id.to_string(),
        execution: Some(execution_message(e)),
        lease_expires_at: e.lease_expires_at.map(timestamp),
    }
}

impl ExecutionApi {
    pub async fn create(
        &self,
        tenant: &TenantContext,
        request: pb::CreateExecutionRequest,
    ) -> Result<pb::Execution> {
        writer(tenant)?;
        if request.queue.starts_with(RESERVED_QUEUE_PREFIX) {
            return Err(ExecutionServiceError::invalid(
                "queue",
                format!("queues named {RESERVED_QUEUE_PREFIX}* are the platform's"),
            ));
        }
        self.enqueue(tenant.org_id, tenant.user_id, request, false)
            .await
    }

    /// EnqueueExecution: for an organization, by a Trellis server.
    pub async fn enqueue_for(&self, request: pb::EnqueueExecutionRequest) -> Result<pb::Execution> {
        let org_id = id("organization_id", &request.organization_id)?;
        let created_by = id("created_by", &request.created_by)?;
        let execution = request
            .execution
            .ok_or_else(|| ExecutionServiceError::invalid("execution", "required"))?;
        if execution.idempotency_key.is_empty() {
            return Err(ExecutionServiceError::invalid(
                "execution.idempotency_key",
                "required",
            ));
        }
        self.enqueue(org_id, created_by, execution, true).await
    }

    async fn enqueue(
        &self,
        org_id: Uuid,
        created_by: Uuid,
        request: pb::CreateExecutionRequest,
        system: bool,
    ) -> Result<pb::Execution> {
        let queue = name("queue", &request.queue)?;
        let image = text("image", &request.image, MAX_IMAGE_BYTES, true)?;
        if request.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(ExecutionServiceError::invalid("payload", "at most 1 MiB"));
        }
        let max_attempts = match request.max_attempts {
            0 => 3,
            n @ 1..=10 => i64::from(n),
            _ => {
                return Err(ExecutionServiceError::invalid(
                    "max_attempts",
                    "1 to 10 (0 = 3)",
                ));
            }
        };
        if request.config.len() > MAX_CONFIG_ENTRIES {
            return Err(ExecutionServiceError::invalid(
                "config",
                format!("at most {MAX_CONFIG_ENTRIES} entries"),
            ));
        }
        let mut config = std::collections::BTreeMap::new();
        for (key, value) in &request.config {
            config.insert(
                text("config", key, MAX_CONFIG_KEY_BYTES, true)?,
                text("config", value, MAX_CONFIG_VALUE_BYTES, false)?,
            );
        }
        let spec = Spec {
            image,
            command: texts("command", &request.command, MAX_ARGS, MAX_ARG_BYTES)?,
            folder: text("folder", &request.folder, MAX_FOLDER_BYTES, false)?,
            tests: texts("tests", &request.tests, MAX_TESTS, MAX_TEST_BYTES)?,
            config,
        };
        let idempotency_key = match request.idempotency_key.as_str() {
            "" => None,
            key => Some(text("idempotency_key", key, MAX_KEY_BYTES, true)?),
        };
        let now = now_ms();
        let allowance = if system {
            None
        } else {
            Some(MonthAllowance {
                month_start: month_start(now),
                limit: self.limits.of(org_id).await?.max_runs_per_month,
            })
        };
        let execution = ExecutionRecord {
            id: Uuid::new_v4(),
            org_id,
            created_by,
            queue,
            state: State::Pending,
            attempt: 0,
            max_attempts,
            priority: i64::from(request.priority.clamp(-1000, 1000)),
            spec,
            payload: request.payload,
            output: Vec::new(),
            error: String::new(),
            analysis: String::new(),
            cancel_requested: false,
            idempotency_key,
            created_at: now,
            started_at: None,
            finished_at: None,
            next_attempt_at: now,
            lease_id: None,
            lease_expires_at: None,
            updated_at: now,
            system,
        };
        match self.queue.create_within(&execution, allowance).await? {
            // A user's key never answers with the platform's execution, nor
            // the other way round.
            Created::Existing(made) if made.system != system => Err(
                ExecutionServiceError::invalid("idempotency_key", "used by another execution"),
            ),
            Created::New(made) | Created::Existing(made) => Ok(execution_message(&made)),
            Created::AllowanceUsed => Err(ExecutionServiceError::MonthlyRunsUsed {
                plan_limit: allowance.map_or(0, |a| a.limit),
            }),
        }
    }

    pub async fn get(&self, tenant: &TenantContext, execution_id: &str) -> Result<pb::Execution> {
        let execution_id = id("execution_id", execution_id)?;
        Ok(execution_message(
            &visible(&self.queue, tenant, execution_id).await?,
        ))
    }

    pub async fn list(
        &self,
        tenant: &TenantContext,
        request: pb::ListExecutionsRequest,
    ) -> Result<pb::ListExecutionsResponse> {
        let state = state_of(request.status);
        let queue = match request.queue.as_str() {
            "" => None,
            queue => Some(name("queue", queue)?),
        };
        let page = Page::parse(request.page_size, &request.page_token)
            .map_err(|e| ExecutionServiceError::invalid(e.field(), e.to_string()))?;
        let found = self
            .queue
            .list(
                tenant.org_id,
                state,
                queue.as_deref(),
                sees_platform_work(tenant),
                &page,
            )
            .await?;
        let cursors: Vec<(i64, String)> = found
            .iter()
            .map(|e| (e.created_at, e.id.to_string()))
            .collect();
        Ok(pb::ListExecutionsResponse {
            next_page_token: page.next_token(&cursors, |(at, id)| (*at, id.as_str())),
            executions: found.iter().map(execution_message).collect(),
        })
    }

    pub async fn cancel(
        &self,
        tenant: &TenantContext,
        execution_id: &str,
    ) -> Result<pb::Execution> {
        writer(tenant)?;
        let execution_id = id("execution_id", execution_id)?;
        if visible(&self.queue, tenant, execution_id).await?.system {
            return Err(ExecutionServiceError::PlatformExecution(execution_id));
        }
        match self
            .queue
            .cancel(tenant.org_id, execution_id, now_ms())
            .await?
        {
            Cancelled::Now(e) | Cancelled::Requested(e) => Ok(execution_message(&e)),
            Cancelled::AlreadyFinal(_) => Err(ExecutionServiceError::AlreadyFinal(execution_id)),
            Cancelled::NotFound => Err(ExecutionServiceError::NotFound(execution_id)),
        }
    }

    pub async fn delete(&self, tenant: &TenantContext, execution_id: &str) -> Result<()> {
        writer(tenant)?;
        let execution_id = id("execution_id", execution_id)?;
        if visible(&self.queue, tenant, execution_id).await?.system {
            return Err(ExecutionServiceError::PlatformExecution(execution_id));
        }
        match self.queue.delete(tenant.org_id, execution_id).await? {
            Deleted::Deleted => Ok(()),
            Deleted::NotFinal => Err(ExecutionServiceError::NotFinal(execution_id)),
            Deleted::NotFound => Err(ExecutionServiceError::NotFound(execution_id)),
        }
    }

    pub async fn lease(&self, request: pb::LeaseRequest) -> Result<Vec<pb::LeasedExecution>> {
        if request.queues.is_empty() || request.queues.len() > MAX_QUEUES_PER_LEASE {
            return Err(ExecutionServiceError::invalid(
                "queues",
                format!("1 to {MAX_QUEUES_PER_LEASE} queues"),
            ));
        }
        let queues = request
            .queues
            .iter()
            .map(|q| name("queues", q))
            .collect::<Result<Vec<_>>>()?;
        let max_items = match request.max_items {
            n @ 1..=100 => n as usize,
            _ => return Err(ExecutionServiceError::invalid("max_items", "1 to 100")),
        };
        let lease_ms = lease_ms("lease_seconds", request.lease_seconds)?;
        let now = now_ms();
        let orgs = self.queue.ready_orgs(&queues).await?;
        if orgs.is_empty() {
            // Idle workers poll: their asking takes no write lock.
            return Ok(Vec::new());
        }
        let limits = self.limits.concurrency_of(&orgs).await;
        let leased = self
            .queue
            .lease(
                &LeaseAsk {
                    queues: &queues,
                    max_items,
                    lease_ms,
                    now,
                },
                // Appeared since the limits were read: one at a time.
                &|org| limits.get(&org).copied().unwrap_or(1),
            )
            .await?;
        Ok(leased.iter().map(leased_message).collect())
    }

    pub async fn heartbeat(&self, request: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
        let lease_id = id("lease_id", &request.lease_id)?;
        let lease_ms = match request.lease_seconds {
            0 => None,
            seconds => Some(lease_ms("lease_seconds", seconds)?),
        };
        let beat = self
            .queue
            .heartbeat(lease_id, lease_ms, now_ms())
            .await?
            .ok_or(ExecutionServiceError::LeaseNotFound(lease_id))?;
        Ok(pb::HeartbeatResponse {
            lease_expires_at: beat.lease_expires_at.map(timestamp),
            cancel_requested: beat.cancel_requested,
        })
    }

    pub async fn complete(&self, request: pb::CompleteRequest) -> Result<pb::Execution> {
        let lease_id = id("lease_id", &request.lease_id)?;
        let state = state_of(request.status)
            .filter(|s| s.is_final() && *s != State::Cancelled)
            .ok_or_else(|| {
                ExecutionServiceError::invalid(
                    "status",
                    "PASSED, FAILED, ERROR, UNSTABLE or ANALYZING",
                )
            })?;
        if request.output.len() > MAX_OUTPUT_BYTES {
            return Err(ExecutionServiceError::invalid("output", "at most 1 MiB"));
        }
        let analysis = text("analysis", &request.analysis, MAX_ANALYSIS_BYTES, false)?;
        let done = self
            .queue
            .complete(lease_id, state, &request.output, &analysis, now_ms())
            .await?
            .ok_or(ExecutionServiceError::LeaseNotFound(lease_id))?;
        Ok(execution_message(&done))
    }

    /// Lines are bounded; control characters other than tab are stored as
    /// U+FFFD, so a program's colour codes cannot reach a reader's terminal.
    pub async fn append_logs(&self, request: pb::AppendLogsRequest) -> Result<i64> {
        let lease_id = id("lease_id", &request.lease_id)?;
        if request.lines.len() > MAX_LINES_PER_APPEND {
            return Err(ExecutionServiceError::invalid(
                "lines",
                format!("at most {MAX_LINES_PER_APPEND} lines per call"),
            ));
        }
        if request.lines.iter().any(|l| l.len() > MAX_LINE_BYTES) {
            return Err(ExecutionServiceError::invalid(
                "lines",
                format!("each line at most {MAX_LINE_BYTES} bytes"),
            ));
        }
        let lines: Vec<String> = request
            .lines
            .iter()
            .map(|line| {
                line.chars()
                    .map(|c| {
                        if c.is_control() && c != '\t' {
                            '\u{FFFD}'
                        } else {
                            c
                        }
                    })
                    .collect()
            })
            .collect();
        match self.queue.append_logs(lease_id, &lines, now_ms()).await? {
            Appended::Through(last) => Ok(last),
            Appended::Full => {
                let execution = self.queue.leased(lease_id, now_ms()).await?;
                Err(ExecutionServiceError::LogFull(
                    execution.map_or(lease_id, |e| e.id),
                ))
            }
            Appended::LeaseNotFound => Err(ExecutionServiceError::LeaseNotFound(lease_id)),
        }
    }

    pub async fn fail(&self, request: pb::FailRequest) -> Result<pb::Execution> {
        let lease_id = id("lease_id", &request.lease_id)?;
        let error = text("error", &request.error, MAX_ERROR_BYTES, false)?;
        let failed = self
            .queue
            .fail(lease_id, &error, request.retryable, now_ms(), &retry_in_ms)
            .await?
            .ok_or(ExecutionServiceError::LeaseNotFound(lease_id))?;
        Ok(execution_message(&failed))
    }
}

/// A lease's duration: 5 s to 1 h, 0 = 60 s.
fn lease_ms(field: &str, seconds: i32) -> Result<i64> {
    match seconds {
        0 => Ok(60_000),
        s @ 5..=3600 => Ok(i64::from(s) * 1000),
        _ => Err(ExecutionServiceError::invalid(field, "5 to 3600 (0 = 60)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_on_the_first_at_midnight_utc() {
        // 2026-12-02T06:32:56Z -> 2026-12-01T00:00:00Z
        assert_eq!(month_start(1_796_193_176_000), 1_796_083_200_000);
        // 2024-02-29T23:59:59.999Z -> 2024-02-01
        assert_eq!(month_start(1_709_251_199_999), 1_706_745_600_000);
        // The first millisecond of a month is its own start.
        assert_eq!(month_start(1_706_745_600_000), 1_706_745_600_000);
    }

    #[test]
    fn retries_double_with_jitter() {
        for attempt in 1..=4 {
            let base = 5_000 * (1 << (attempt - 1));
            for _ in 0..100 {
                let wait = retry_in_ms(attempt);
                assert!(
                    (base / 2..=base * 3 / 2).contains(&wait),
                    "{attempt}: {wait}"
                );
            }
        }
    }
}
