//! Publishing envelopes: results, escalations and dead letters. A publish returns only once the
//! broker has acknowledged the message; until then the job's offset must not move.

pub mod compose;
pub mod replay;

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Destination topic.
    pub topic: String,
    /// Message key (the intake key, or the job id).
    pub key: String,
    /// JSON body.
    pub payload: Vec<u8>,
    /// Headers for routing and filtering without parsing the body.
    pub headers: Vec<(&'static str, String)>,
}

impl Envelope {
    /// Whether this is an audit copy (`gate.audit`): the job's result is published beside it,
    /// so losing it loses an audit, not the job.
    pub fn is_audit_copy(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| *k == "switchyard.reason" && v == "audit")
    }
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refuses this message for good (too large, say); retrying cannot help.
    #[error("the broker refused the message for topic {topic}: {source}")]
    Refused {
        /// Topic.
        topic: String,
        /// Why.
        source: KafkaError,
    },
    /// Shutdown came before the broker acknowledged; the job will be redelivered.
    #[error("shutting down before the broker acknowledged a message for {topic}")]
    ShuttingDown {
        /// Topic.
        topic: String,
    },
}

/// Where envelopes go: Kafka ([`Output`]) in the product, memory ([`MemoryPublisher`]) in
/// tests. A publish returns only when the destination has the message.
pub trait Publisher: Send + Sync + std::fmt::Debug {
    /// Publishes one envelope, waiting for the acknowledgement (until `shutdown`).
    fn publish<'a>(
        &'a self,
        env: &'a Envelope,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Waits for everything queued to be acknowledged (at shutdown).
    fn flush(&self, timeout: Duration);
}

/// Envelopes kept in memory, in publish order.
#[derive(Debug, Default)]
pub struct MemoryPublisher {
    sent: std::sync::Mutex<Vec<Envelope>>,
}

impl MemoryPublisher {
    /// Everything published so far.
    pub fn sent(&self) -> Vec<Envelope> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Publisher for MemoryPublisher {
    fn publish<'a>(
        &'a self,
        env: &'a Envelope,
        _shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(env.clone());
        Box::pin(std::future::ready(Ok(())))
    }

    fn flush(&self, _timeout: Duration) {}
}

impl Publisher for Output {
    fn publish<'a>(
        &'a self,
        env: &'a Envelope,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(Output::publish(self, env, shutdown))
    }

    fn flush(&self, timeout: Duration) {
        Output::flush(self, timeout);
    }
}

/// The producer shared by every stage of a process.
pub struct Output {
    producer: FutureProducer,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Output")
    }
}

impl Output {
    /// Wraps a producer.
    pub fn new(producer: FutureProducer) -> Self {
        Self { producer }
    }

    /// Publishes and waits for the acknowledgement. Transient failures (broker down, queue
    /// full) are retried with backoff until `shutdown`; permanent ones return at once.
    pub async fn publish(
        &self,
        env: &Envelope,
        shutdown: &CancellationToken,
    ) -> Result<(), PublishError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(env.headers.len());
            for (k, v) in &env.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let record = FutureRecord::to(&env.topic)
                .key(env.key.as_bytes())
                .payload(&env.payload)
                .headers(headers);
            let send = self.producer.send(record, Duration::from_secs(5));
            let error = tokio::select! {
                r = send => match r {
                    Ok(_) => return Ok(()),
                    Err((e, _)) => e,
                },
                _ = shutdown.cancelled() => return Err(PublishError::ShuttingDown { topic: env.topic.clone() }),
            };
            if is_permanent(&error) {
                return Err(PublishError::Refused {
                    topic: env.topic.clone(),
                    source: error,
                });
            }
            tracing::warn!(topic = %env.topic, error = %error, retry_in = ?backoff, "publish failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return Err(PublishError::ShuttingDown { topic: env.topic.clone() }),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Waits for every queued message to be acknowledged (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
    }
}

fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}
