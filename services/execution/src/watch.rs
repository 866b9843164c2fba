//! The two live streams: an organization's execution events and one
//! execution's log lines. Both read the database and wait on the fan-out
//! between reads, so a stream on any replica sees what every replica
//! wrote, and a lost wake-up costs latency, never a line or an event.
//! Subscribing comes before the first read: nothing committed in between
//! is missed.

use trellis::execution::v1 as pb;
use trellis_runtime::time::timestamp;
use trellis_runtime::{StreamSender, TaskStream, spawn_stream, status_of};
use trellis_store::Subscription;
use trellis_tenancy::TenantContext;

use crate::api::{execution_message, id, name, sees_platform_work, state_of, visible};
use crate::error::{ExecutionServiceError, Result};
use crate::store::{Queue, Resume, State, events_topic, logs_topic};

/// Events or lines read per query.
const BATCH: i64 = 500;

/// Waits for the next wake-up, forgetting any others already queued; false
/// when the reader left or the fan-out is gone.
async fn next_wake<T>(subscription: &mut Subscription, sender: &StreamSender<T>) -> bool {
    tokio::select! {
        () = sender.closed() => false,
        wake = subscription.recv() => {
            subscription.clear();
            wake.is_some()
        }
    }
}

pub async fn watch_executions(
    queue: &Queue,
    tenant: &TenantContext,
    request: pb::WatchExecutionsRequest,
) -> Result<TaskStream<pb::WatchExecutionsResponse>> {
    let org_id = tenant.org_id;
    let state = state_of(request.status);
    let only_queue = match request.queue.as_str() {
        "" => None,
        queue => Some(name("queue", queue)?),
    };
    let platform_work = sees_platform_work(tenant);
    let mut subscription = queue.fanout().subscribe(&events_topic(org_id));
    let mut cursor = match request.resume_after {
        None => queue.last_event_id(org_id).await?,
        Some(after) => match queue.resume(org_id, after).await? {
            Resume::From(after) => after,
            Resume::OutOfRange {
                oldest_retained,
                last,
            } => {
                return Err(ExecutionServiceError::ResumeOutOfRange {
                    asked: after,
                    oldest_retained,
                    last,
                });
            }
        },
    };
    let queue = queue.clone();
    Ok(spawn_stream(move |sender| async move {
        loop {
            let events = match queue.events_after(org_id, cursor, BATCH).await {
                Ok(events) => events,
                Err(error) => {
                    return sender
                        .fail(status_of(ExecutionServiceError::from(error)))
                        .await;
                }
            };
            let full = events.len() as i64 == BATCH;
            for event in events {
                cursor = event.event_id;
                let execution = &event.execution;
                if (execution.system && !platform_work)
                    || state.is_some_and(|s| s != execution.state)
                    || only_queue.as_ref().is_some_and(|q| *q != execution.queue)
                {
                    continue;
                }
                let message = pb::WatchExecutionsResponse {
                    event: Some(pb::ExecutionEvent {
                        event_id: event.event_id,
                        execution: Some(execution_message(execution)),
                        occurred_at: Some(timestamp(event.occurred_at)),
                    }),
                };
                if !sender.send(message).await {
                    return;
                }
            }
            if !full && !next_wake(&mut subscription, &sender).await {
                return;
            }
        }
    }))
}

pub async fn stream_logs(
    queue: &Queue,
    tenant: &TenantContext,
    request: pb::StreamLogsRequest,
) -> Result<TaskStream<pb::StreamLogsResponse>> {
    let org_id = tenant.org_id;
    let execution_id = id("execution_id", &request.execution_id)?;
    if request.after_sequence < 0 {
        return Err(ExecutionServiceError::invalid(
            "after_sequence",
            "must not be negative",
        ));
    }
    let mut subscription = request
        .follow
        .then(|| queue.fanout().subscribe(&logs_topic(execution_id)));
    let first = visible(queue, tenant, execution_id).await?;
    let queue = queue.clone();
    let mut cursor = request.after_sequence;
    Ok(spawn_stream(move |sender| async move {
        let mut state = Some(first.state);
        loop {
            // Lines come only under a live lease: once final was seen,
            // the lines read after it are all there will be.
            let over = state.is_none_or(State::is_final);
            loop {
                let lines = match queue.logs(org_id, execution_id, cursor, BATCH).await {
                    Ok(lines) => lines,
                    Err(error) => {
                        return sender
                            .fail(status_of(ExecutionServiceError::from(error)))
                            .await;
                    }
                };
                let Some(last) = lines.last() else { break };
                cursor = last.sequence;
                let full = lines.len() as i64 == BATCH;
                let message = pb::StreamLogsResponse {
                    lines: lines
                        .into_iter()
                        .map(|l| pb::LogLine {
                            sequence: l.sequence,
                            timestamp: Some(timestamp(l.logged_at)),
                            attempt: l.attempt as i32,
                            line: l.line,
                        })
                        .collect(),
                };
                if !sender.send(message).await {
                    return;
                }
                if !full {
                    break;
                }
            }
            let Some(subscription) = subscription.as_mut() else {
                return;
            };
            if over || !next_wake(subscription, &sender).await {
                return;
            }
            state = match queue.get(org_id, execution_id).await {
                Ok(found) => found.map(|e| e.state),
                Err(error) => {
                    return sender
                        .fail(status_of(ExecutionServiceError::from(error)))
                        .await;
                }
            };
        }
    }))
}
