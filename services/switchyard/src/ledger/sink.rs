//! The ledger sink: reads the ledger topic and writes batches to a [`LedgerStore`], moving its
//! offsets only after a write succeeded.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{LedgerRecord, LedgerStore};
use crate::kafka::KafkaSettings;

/// Why the sink could not start consuming.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The consumer could not be created.
    #[error("ledger sink: cannot create a consumer: {0}")]
    Consumer(String),
    /// The topic could not be subscribed to.
    #[error("ledger sink: cannot subscribe to {topic}: {source}")]
    Subscribe {
        /// The ledger topic.
        topic: String,
        /// Why.
        source: Box<rdkafka::error::KafkaError>,
    },
}

/// Reads the ledger topic and writes it to `store` until `shutdown`. Batches of up to 500
/// records or 200 ms; a failed write is retried (backoff up to 5 s) before offsets move.
pub async fn run_sink(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    store: &dyn LedgerStore,
    shutdown: CancellationToken,
) -> Result<(), SinkError> {
    let mut config = kafka.reader(group);
    // Offsets are committed by hand after each successful write; a long database outage must
    // not make the group evict the sink.
    config.set("max.poll.interval.ms", "86400000");
    let consumer: StreamConsumer = config
        .create()
        .map_err(|e| SinkError::Consumer(crate::kafka::error_text(&e)))?;
    consumer
        .subscribe(&[topic])
        .map_err(|source| SinkError::Subscribe {
            topic: topic.to_string(),
            source: Box::new(source),
        })?;
    tracing::info!(topic, group, "ledger sink consuming");
    let mut batch: Vec<LedgerRecord> = Vec::new();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let deadline = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(deadline);
        let stop = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break true,
                _ = &mut deadline => break false,
                m = consumer.recv() => match m {
                    Ok(m) => {
                        offsets.insert(m.partition(), m.offset());
                        match m.payload().map(serde_json::from_slice::<LedgerRecord>) {
                            Some(Ok(r)) => batch.push(r),
                            Some(Err(e)) => tracing::error!(partition = m.partition(), offset = m.offset(), error = %e, "ledger message is not a ledger record; skipped"),
                            None => {}
                        }
                        if batch.len() >= 500 {
                            break false;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ledger sink: consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        };
        if !batch.is_empty() {
            let mut backoff = Duration::from_millis(200);
            loop {
                match store.write(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, records = batch.len(), retry_in = ?backoff, "ledger write failed; will retry (nothing is lost)");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            batch.clear();
        }
        if !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &offsets {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(o + 1));
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "ledger sink: commit failed; records may be re-read (writes are idempotent)");
            }
            offsets.clear();
        }
        if stop {
            return Ok(());
        }
    }
}
