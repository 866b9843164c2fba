//! Background tasks a server runs beside its RPCs (outbox relays, lease
//! reapers, sweepers): started with the server by `trellis up` and
//! `trellis serve` alike, told to stop on shutdown and given the grace to
//! do so, and never allowed to die silently: a task that ends before
//! shutdown is logged and turns the server's health NOT_SERVING, so
//! Kubernetes routes around it and restarts it instead of it serving
//! without doing its work.

use std::future::Future;
use std::pin::Pin;

use tokio::task::JoinSet;

use crate::shutdown::Shutdown;

pub type TaskError = Box<dyn std::error::Error + Send + Sync>;
type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

/// A task not started yet: it gets the shutdown signal to watch.
pub(crate) struct BackgroundTask {
    pub(crate) name: &'static str,
    pub(crate) start: Box<dyn FnOnce(Shutdown) -> TaskFuture + Send>,
}

impl BackgroundTask {
    pub(crate) fn new<F, Fut>(name: &'static str, start: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        BackgroundTask {
            name,
            start: Box::new(move |shutdown| Box::pin(start(shutdown))),
        }
    }
}

/// The running tasks of one server.
pub(crate) struct RunningTasks(JoinSet<(&'static str, Result<(), TaskError>)>);

impl RunningTasks {
    pub(crate) fn start(tasks: Vec<BackgroundTask>, shutdown: &Shutdown) -> Self {
        let mut set = JoinSet::new();
        for task in tasks {
            let future = (task.start)(shutdown.clone());
            let name = task.name;
            set.spawn(async move { (name, future.await) });
        }
        RunningTasks(set)
    }

    /// Waits for the first task to end (never, while none do, or with none)
    /// and says which and how.
    pub(crate) async fn first_to_end(&mut self) -> String {
        match self.0.join_next().await {
            Some(Ok((name, Ok(())))) => format!("{name} stopped"),
            Some(Ok((name, Err(error)))) => format!("{name} failed: {error}"),
            Some(Err(error)) => format!("a background task panicked: {error}"),
            None => std::future::pending().await,
        }
    }

    /// After shutdown fired: lets the tasks finish, until `wait` is spent.
    pub(crate) async fn stop(mut self, server: &'static str, wait: std::time::Duration) {
        let finished = tokio::time::timeout(wait, async {
            while let Some(ended) = self.0.join_next().await {
                if let Ok((name, Err(error))) = ended {
                    tracing::warn!(server, task = name, %error, "background task failed while stopping");
                }
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                server,
                "background tasks outlived the shutdown grace; aborted"
            );
            self.0.abort_all();
        }
    }
}
