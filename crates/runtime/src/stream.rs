//! Server streams fed by a task: the handler returns the receiving end at
//! once, the task produces into a small buffer (so a slow reader holds it
//! back) and stops when the reader goes away, even while it waits for
//! something to send.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Responses a producer may be ahead of its reader.
const BUFFER: usize = 4;

/// The response stream handed to tonic (its generated traits want it
/// boxed).
pub type TaskStream<T> = tonic::codegen::BoxStream<T>;

/// The producing side of a [`TaskStream`].
pub struct StreamSender<T>(mpsc::Sender<Result<T, Status>>);

impl<T> StreamSender<T> {
    /// Sends one response; false once the reader is gone (stop producing).
    pub async fn send(&self, item: T) -> bool {
        self.0.send(Ok(item)).await.is_ok()
    }

    /// Ends the stream with `status`.
    pub async fn fail(&self, status: Status) {
        let _ = self.0.send(Err(status)).await;
    }

    /// Resolves when the reader is gone: race waiting against it.
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

/// Runs `produce` as a task feeding the returned stream; the stream ends
/// when `produce` returns.
pub fn spawn_stream<T, F, Fut>(produce: F) -> TaskStream<T>
where
    T: Send + 'static,
    F: FnOnce(StreamSender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(produce(StreamSender(sender)));
    Box::pin(ReceiverStream::new(receiver))
}
