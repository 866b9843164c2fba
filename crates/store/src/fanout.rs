//! Wake-ups across replicas: a server publishes on a topic (say, one
//! organization's executions) and every subscriber of that topic, in this
//! process or another replica, hears of it. In-process by default
//! ([`MemoryFanOut`]), PostgreSQL `LISTEN/NOTIFY` ([`PgFanOut`]) or Redis
//! pub/sub ([`RedisFanOut`]) when the deployment has them.
//!
//! A wake-up, not a log: what changed stays in the database, and a
//! subscriber that hears a message (or [`Wake::Resync`], when messages may
//! have been lost: it fell behind, or the connection to PostgreSQL or Redis
//! was re-made) reads it from there. A lost message costs latency, never an
//! event.
//!
//! Remote backends use one channel (and one connection) for the whole
//! process, whatever the number of topics; messages are dispatched here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::error::StoreError;

/// Topics are names the servers make (`exec:<org id>`), never raw input.
pub const MAX_TOPIC_BYTES: usize = 128;
/// What one message may carry (PostgreSQL allows 8000 bytes per NOTIFY).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Messages a slow subscriber may fall behind before it gets a resync.
const BACKLOG: usize = 256;

/// What a subscriber hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    Message(Arc<str>),
    /// Messages may have been missed: read the current state again.
    Resync,
}

/// One topic's subscription; dropping it unsubscribes.
pub struct Subscription(broadcast::Receiver<Wake>);

impl Subscription {
    /// The next wake-up; `None` once the fan-out itself is gone.
    pub async fn recv(&mut self) -> Option<Wake> {
        match self.0.recv().await {
            Ok(wake) => Some(wake),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Wake::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Forgets wake-ups already waiting: a subscriber about to read the
    /// current state from the database has heard them all at once.
    pub fn clear(&mut self) {
        while !matches!(
            self.0.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
    }
}

#[tonic::async_trait]
pub trait FanOut: Send + Sync + 'static {
    /// Tells every subscriber of `topic`, in every replica.
    async fn publish(&self, topic: &str, message: &str) -> Result<(), StoreError>;

    fn subscribe(&self, topic: &str) -> Subscription;

    /// Which backend carries the messages, for logs.
    fn backend_name(&self) -> &'static str;
}

fn checked(topic: &str, message: &str) -> Result<(), StoreError> {
    let topic_ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'));
    if !topic_ok || message.len() > MAX_MESSAGE_BYTES {
        return Err(StoreError::FanOut(format!(
            "topic must be 1-{MAX_TOPIC_BYTES} bytes of [A-Za-z0-9:-_.] and a message at most {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// This process's subscribers, by topic. A topic's entry lives while it
/// has subscribers: the map is bounded by them (and they by the servers'
/// stream limits).
#[derive(Default)]
struct Hub {
    topics: Mutex<HashMap<String, broadcast::Sender<Wake>>>,
}

impl Hub {
    fn subscribe(&self, topic: &str) -> Subscription {
        let mut topics = self.topics.lock().expect("fan-out hub poisoned");
        topics.retain(|_, sender| sender.receiver_count() > 0);
        let sender = topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(BACKLOG).0);
        Subscription(sender.subscribe())
    }

    fn deliver(&self, topic: &str, wake: Wake) {
        let topics = self.topics.lock().expect("fan-out hub poisoned");
        if let Some(sender) = topics.get(topic) {
            // No receiver left: nothing to tell.
            let _ = sender.send(wake);
        }
    }

    fn resync_all(&self) {
        let topics = self.topics.lock().expect("fan-out hub poisoned");
        for sender in topics.values() {
            let _ = sender.send(Wake::Resync);
        }
    }

    fn topic_count(&self) -> usize {
        let topics = self.topics.lock().expect("fan-out hub poisoned");
        topics
            .values()
            .filter(|sender| sender.receiver_count() > 0)
            .count()
    }

    /// A remote frame is `topic '\n' message`.
    fn deliver_frame(&self, frame: &str) {
        if let Some((topic, message)) = frame.split_once('\n') {
            self.deliver(topic, Wake::Message(Arc::from(message)));
        }
    }
}

fn frame(topic: &str, message: &str) -> String {
    format!("{topic}\n{message}")
}

/// One process: subscribers hear what this process publishes.
#[derive(Default)]
pub struct MemoryFanOut {
    hub: Hub,
}

impl MemoryFanOut {
    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.hub.topic_count()
    }
}

#[tonic::async_trait]
impl FanOut for MemoryFanOut {
    async fn publish(&self, topic: &str, message: &str) -> Result<(), StoreError> {
        checked(topic, message)?;
        self.hub.deliver(topic, Wake::Message(Arc::from(message)));
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> Subscription {
        self.hub.subscribe(topic)
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

/// Waits before re-making a lost connection, growing to a few seconds.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 2_u64.pow(attempt.min(5)))
}

/// Every replica on one PostgreSQL database: `NOTIFY` on one channel, one
/// `LISTEN` connection per process.
pub struct PgFanOut {
    pool: sqlx::PgPool,
    channel: String,
    hub: Arc<Hub>,
    listener: tokio::task::JoinHandle<()>,
}

impl PgFanOut {
    /// Listens on `channel` (a PostgreSQL identifier the deployment names)
    /// until dropped.
    pub async fn start(pool: sqlx::PgPool, channel: &str) -> Result<PgFanOut, StoreError> {
        let hub = Arc::new(Hub::default());
        let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
        listener.listen(channel).await?;
        let listening = {
            let hub = hub.clone();
            let channel = channel.to_owned();
            tokio::spawn(async move {
                let mut failures = 0;
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            failures = 0;
                            hub.deliver_frame(notification.payload());
                        }
                        // The connection was lost; sqlx re-makes it (and
                        // re-listens) on the next call. Anything sent
                        // meanwhile is gone: everyone re-reads.
                        Ok(None) => hub.resync_all(),
                        Err(error) => {
                            tracing::warn!(%error, channel, "fan-out listener failed; retrying");
                            hub.resync_all();
                            tokio::time::sleep(backoff(failures)).await;
                            failures += 1;
                        }
                    }
                }
            })
        };
        Ok(PgFanOut {
            pool,
            channel: channel.to_owned(),
            hub,
            listener: listening,
        })
    }
}

impl Drop for PgFanOut {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[tonic::async_trait]
impl FanOut for PgFanOut {
    async fn publish(&self, topic: &str, message: &str) -> Result<(), StoreError> {
        checked(topic, message)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(frame(topic, message))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> Subscription {
        self.hub.subscribe(topic)
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }
}

/// Every replica on one Redis: `PUBLISH` on one channel through the pool,
/// one subscribed connection per process, re-made when it drops.
pub struct RedisFanOut {
    pool: crate::RedisPool,
    channel: String,
    hub: Arc<Hub>,
    listener: tokio::task::JoinHandle<()>,
}

impl RedisFanOut {
    /// Subscribes to `channel` on the Redis at `url` until dropped.
    pub async fn start(
        url: &str,
        pool: crate::RedisPool,
        channel: &str,
    ) -> Result<RedisFanOut, StoreError> {
        let client = redis::Client::open(url)?;
        let hub = Arc::new(Hub::default());
        // The first subscription is made here, so a wrong URL fails at start.
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        let listening = {
            let hub = hub.clone();
            let channel = channel.to_owned();
            tokio::spawn(async move {
                use tokio_stream::StreamExt;
                let mut failures = 0;
                let mut current = Some(pubsub);
                loop {
                    if let Some(pubsub) = current.take() {
                        let mut messages = pubsub.into_on_message();
                        while let Some(message) = messages.next().await {
                            failures = 0;
                            if let Ok(frame) = message.get_payload::<String>() {
                                hub.deliver_frame(&frame);
                            }
                        }
                        tracing::warn!(channel, "fan-out subscription ended; re-subscribing");
                    }
                    hub.resync_all();
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                    match client.get_async_pubsub().await {
                        Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                            Ok(()) => {
                                current = Some(pubsub);
                                // Sent while unsubscribed: gone.
                                hub.resync_all();
                            }
                            Err(error) => tracing::warn!(%error, "fan-out re-subscribe failed"),
                        },
                        Err(error) => tracing::warn!(%error, "fan-out reconnect failed"),
                    }
                }
            })
        };
        Ok(RedisFanOut {
            pool,
            channel: channel.to_owned(),
            hub,
            listener: listening,
        })
    }
}

impl Drop for RedisFanOut {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[tonic::async_trait]
impl FanOut for RedisFanOut {
    async fn publish(&self, topic: &str, message: &str) -> Result<(), StoreError> {
        checked(topic, message)?;
        let mut connection = self.pool.get().await?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(frame(topic, message))
            .query_async(&mut *connection)
            .await?;
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> Subscription {
        self.hub.subscribe(topic)
    }

    fn backend_name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_hear_their_topic_only_and_leave_no_entry_behind() {
        let fanout = MemoryFanOut::default();
        let mut ana = fanout.subscribe("exec:a");
        let mut bob = fanout.subscribe("exec:b");
        fanout.publish("exec:a", "7").await.unwrap();
        assert_eq!(ana.recv().await, Some(Wake::Message(Arc::from("7"))));
        fanout.publish("exec:b", "").await.unwrap();
        assert_eq!(bob.recv().await, Some(Wake::Message(Arc::from(""))));
        assert_eq!(fanout.topic_count(), 2);
        drop((ana, bob));
        assert_eq!(fanout.topic_count(), 0);
        // Publishing with nobody listening is not an error.
        fanout.publish("exec:c", "1").await.unwrap();
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_to_resync() {
        let fanout = MemoryFanOut::default();
        let mut slow = fanout.subscribe("t");
        for n in 0..(BACKLOG + 10) {
            fanout.publish("t", &n.to_string()).await.unwrap();
        }
        assert_eq!(slow.recv().await, Some(Wake::Resync));
    }

    #[tokio::test]
    async fn topics_and_messages_are_bounded() {
        let fanout = MemoryFanOut::default();
        for (topic, message) in [
            ("", "m"),
            ("has space", "m"),
            ("line\nbreak", "m"),
            (&*"t".repeat(MAX_TOPIC_BYTES + 1), "m"),
            ("t", &*"m".repeat(MAX_MESSAGE_BYTES + 1)),
        ] {
            assert!(fanout.publish(topic, message).await.is_err(), "{topic:?}");
        }
    }
}
