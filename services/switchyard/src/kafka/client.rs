//! Loading jobs onto a pipeline's intake topic, and reading topics back.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::envelope::{Intake, now};
use crate::kafka::KafkaSettings;

/// A job line that could not be turned into a job.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct JobLineError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads JSONL: each line is either an intake job (it has `payload`; a missing `job_id` gets a
/// fresh one, a missing `tenant`, `pipeline` or `created_at` is filled in) or a bare payload
/// object, wrapped into a job for `pipeline` and `tenant`. A bare payload's own `job_id`, if it
/// has one, becomes the job's id (so producing a file twice makes duplicates that dedup by
/// job id can catch); otherwise the job gets a fresh id.
pub fn jobs_from_jsonl(
    text: &str,
    file: &str,
    pipeline: &str,
    tenant: &str,
) -> Result<Vec<Intake>, JobLineError> {
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |message: String| JobLineError {
            file: file.to_string(),
            line: i + 1,
            message,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| fail(format!("not JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(fail(
                "a line must be a JSON object (a job or a payload)".into(),
            ));
        };
        let job_id = match object.get("job_id") {
            None => uuid::Uuid::new_v4().to_string(),
            Some(Value::String(id)) if crate::envelope::usable_id(id) => id.clone(),
            Some(other) => {
                let shown: String = other.to_string().chars().take(60).collect();
                return Err(fail(format!(
                    "job_id {shown} is not a usable id: 1–200 characters of A-Z a-z 0-9 . _ : -"
                )));
            }
        };
        let job = if object.contains_key("payload") {
            let fill = |o: &mut serde_json::Map<String, Value>, k: &str, v: Value| {
                o.entry(k.to_string()).or_insert(v);
            };
            fill(&mut object, "job_id", Value::String(job_id));
            fill(&mut object, "tenant", Value::String(tenant.to_string()));
            fill(&mut object, "pipeline", Value::String(pipeline.to_string()));
            let created = now()
                .format(&time::format_description::well_known::Rfc3339)
                .map_or(Value::Null, Value::String);
            fill(&mut object, "created_at", created);
            serde_json::from_value::<Intake>(Value::Object(object))
                .map_err(|e| fail(format!("not a valid intake job: {e}")))?
        } else {
            object.remove("job_id");
            Intake {
                job_id: job_id.into(),
                tenant: tenant.into(),
                pipeline: pipeline.to_string(),
                payload: Value::Object(object),
                created_at: now(),
                metadata: BTreeMap::new(),
                redrive_count: 0,
            }
        };
        jobs.push(job);
    }
    Ok(jobs)
}

/// Why a Kafka client call failed; every text says where (brokers, topic) and, where it helps,
/// what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client could not be created (bad settings).
    #[error("cannot create a {what} for {brokers}: {detail}")]
    Create {
        /// Producer, reader or client.
        what: &'static str,
        /// The bootstrap servers.
        brokers: String,
        /// librdkafka's reason, without option values.
        detail: String,
    },
    /// No metadata came back in time.
    #[error("cannot reach the brokers at {brokers} within 15 s: {source}; is the broker running?")]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// Why.
        source: Box<KafkaError>,
    },
    /// A topic's metadata could not be read.
    #[error("cannot read the metadata of {topic} from {brokers}: {source}")]
    Metadata {
        /// Topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
        /// Why.
        source: Box<KafkaError>,
    },
    /// The topic does not exist.
    #[error(
        "topic {topic} does not exist on {brokers}; create it (switchyard validate lists a pipeline's topics)"
    )]
    NoTopic {
        /// Topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
    },
    /// Partitions could not be assigned.
    #[error("cannot assign {what}: {source}")]
    Assign {
        /// Which partitions.
        what: String,
        /// Why.
        source: Box<KafkaError>,
    },
    /// The broker did not acknowledge a message.
    #[error("sending to {topic} failed after {sent} messages: {source}")]
    Send {
        /// Topic.
        topic: String,
        /// Messages acknowledged before the failure.
        sent: usize,
        /// Why.
        source: Box<KafkaError>,
    },
}

/// Sends `(key, value)` messages to `topic` and waits until the broker has acknowledged all.
pub async fn send_all(
    kafka: &KafkaSettings,
    topic: &str,
    messages: &[(String, Vec<u8>)],
) -> Result<usize, ClientError> {
    let outgoing: Vec<Outgoing<'_>> = messages
        .iter()
        .map(|(key, value)| Outgoing {
            topic,
            key,
            value,
            header: None,
        })
        .collect();
    send_messages(kafka, &outgoing).await
}

/// One message to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Key.
    pub key: &'a str,
    /// Value.
    pub value: &'a [u8],
    /// One header, `(name, value)`.
    pub header: Option<(&'a str, &'a str)>,
}

/// Sends messages and waits until the broker has acknowledged all.
pub async fn send_messages(
    kafka: &KafkaSettings,
    messages: &[Outgoing<'_>],
) -> Result<usize, ClientError> {
    let producer: FutureProducer = kafka.producer().create().map_err(|e| ClientError::Create {
        what: "producer",
        brokers: kafka.brokers.clone(),
        detail: crate::kafka::error_text(&e),
    })?;
    let producer = &producer;
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let mut record = FutureRecord::to(m.topic)
            .key(m.key.as_bytes())
            .payload(m.value);
        if let Some((name, value)) = m.header {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: name,
                value: Some(value),
            }));
        }
        pending.push(async move {
            (
                m.topic,
                producer.send(record, Duration::from_secs(30)).await,
            )
        });
    }
    let mut sent = 0;
    for (topic, r) in futures::future::join_all(pending).await {
        match r {
            Ok(_) => sent += 1,
            Err((source, _)) => {
                return Err(ClientError::Send {
                    topic: topic.to_string(),
                    sent,
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(sent)
}

/// Sends intake jobs where `pipeline` takes them: the intake topic, or with
/// `tenant_from: topic` each job's tenant's own topic, with `tenant_from: header` carrying the
/// tenant header (as the authenticated bridge would set it).
pub async fn produce_intake(
    kafka: &KafkaSettings,
    pipeline: &crate::config::Pipeline,
    jobs: &[Intake],
) -> Result<usize, ClientError> {
    let header = match &pipeline.tenant_binding {
        crate::config::TenantBinding::Header(name) => Some(name.as_str()),
        _ => None,
    };
    let rows: Vec<(String, String, Vec<u8>, &str)> = jobs
        .iter()
        .map(|j| {
            (
                pipeline.tenant_intake_topic(&j.tenant),
                j.job_id.to_string(),
                serde_json::to_vec(j).unwrap_or_default(),
                j.tenant.as_str(),
            )
        })
        .collect();
    let outgoing: Vec<Outgoing<'_>> = rows
        .iter()
        .map(|(topic, key, value, tenant)| Outgoing {
            topic,
            key,
            value,
            header: header.map(|h| (h, *tenant)),
        })
        .collect();
    send_messages(kafka, &outgoing).await
}

/// The topics of `topics` that the cluster does not have.
pub fn missing_topics(
    kafka: &KafkaSettings,
    topics: &[String],
) -> Result<Vec<String>, ClientError> {
    let consumer: StreamConsumer =
        kafka
            .reader("switchyard-topic-check")
            .create()
            .map_err(|e| ClientError::Create {
                what: "client",
                brokers: kafka.brokers.clone(),
                detail: crate::kafka::error_text(&e),
            })?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(15))
        .map_err(|source| ClientError::Unreachable {
            brokers: kafka.brokers.clone(),
            source: Box::new(source),
        })?;
    let present: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    Ok(topics
        .iter()
        .filter(|t| !present.contains(&t.as_str()))
        .cloned()
        .collect())
}

/// Where a consumer group stands on some topics before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStart {
    /// Partitions with a committed offset.
    pub committed: usize,
    /// Partitions in all.
    pub partitions: usize,
    /// Messages from the earliest offset to the end, over partitions without a committed
    /// offset: what a start from the earliest would process.
    pub uncommitted_backlog: i64,
}

/// `group`'s committed offsets on every partition of `topics`, read without joining the
/// group, with the client that read them (for watermarks).
fn committed_of(
    kafka: &KafkaSettings,
    group: &str,
    topics: &[String],
) -> Result<(rdkafka::consumer::BaseConsumer, TopicPartitionList), ClientError> {
    use rdkafka::consumer::BaseConsumer;
    let unreachable = |source| ClientError::Unreachable {
        brokers: kafka.brokers.clone(),
        source: Box::new(source),
    };
    let consumer: BaseConsumer = kafka
        .reader(group)
        .create()
        .map_err(|e| ClientError::Create {
            what: "client",
            brokers: kafka.brokers.clone(),
            detail: crate::kafka::error_text(&e),
        })?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(15))
        .map_err(unreachable)?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|w| w == t.name()))
    {
        for p in t.partitions() {
            tpl.add_partition(t.name(), p.id());
        }
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(15))
        .map_err(unreachable)?;
    Ok((consumer, committed))
}

/// Reads `group`'s committed offsets on `topics` (without joining the group).
pub fn group_start(
    kafka: &KafkaSettings,
    group: &str,
    topics: &[String],
) -> Result<GroupStart, ClientError> {
    let (consumer, committed) = committed_of(kafka, group, topics)?;
    let mut start = GroupStart {
        committed: 0,
        partitions: committed.count(),
        uncommitted_backlog: 0,
    };
    for e in committed.elements() {
        if matches!(e.offset(), Offset::Offset(o) if o >= 0) {
            start.committed += 1;
        } else if let Ok((low, high)) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
        {
            start.uncommitted_backlog += (high - low).max(0);
        }
    }
    Ok(start)
}

/// Messages `group` has not yet committed past on `topics` (a partition without a committed
/// offset counts from its low watermark).
pub fn group_lag(
    kafka: &KafkaSettings,
    group: &str,
    topics: &[String],
) -> Result<i64, ClientError> {
    let (consumer, committed) = committed_of(kafka, group, topics)?;
    let unreachable = |source| ClientError::Unreachable {
        brokers: kafka.brokers.clone(),
        source: Box::new(source),
    };
    let mut lag = 0;
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
            .map_err(unreachable)?;
        let at = match e.offset() {
            Offset::Offset(o) if o >= 0 => o,
            _ => low,
        };
        lag += (high - at).max(0);
    }
    Ok(lag)
}

/// Produces intake jobs, keyed by job id.
pub async fn produce_jobs(
    kafka: &KafkaSettings,
    topic: &str,
    jobs: &[Intake],
) -> Result<usize, ClientError> {
    let messages: Vec<(String, Vec<u8>)> = jobs
        .iter()
        .map(|j| {
            (
                j.job_id.to_string(),
                serde_json::to_vec(j).unwrap_or_default(),
            )
        })
        .collect();
    send_all(kafka, topic, &messages).await
}

/// A reader of whole topics from the beginning. Partitions are assigned directly (no group
/// join), so it reads from the moment it is created.
pub fn reader(kafka: &KafkaSettings, topics: &[&str]) -> Result<StreamConsumer, ClientError> {
    let group = format!("switchyard-reader-{}", uuid::Uuid::new_v4());
    let consumer: StreamConsumer =
        kafka
            .reader(&group)
            .create()
            .map_err(|e| ClientError::Create {
                what: "reader",
                brokers: kafka.brokers.clone(),
                detail: crate::kafka::error_text(&e),
            })?;
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|source| ClientError::Metadata {
                topic: topic.to_string(),
                brokers: kafka.brokers.clone(),
                source: Box::new(source),
            })?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == *topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if partitions == 0 {
            return Err(ClientError::NoTopic {
                topic: topic.to_string(),
                brokers: kafka.brokers.clone(),
            });
        }
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|source| ClientError::Assign {
                    what: format!("{topic}/{p}"),
                    source: Box::new(source),
                })?;
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|source| ClientError::Assign {
            what: format!("{topics:?}"),
            source: Box::new(source),
        })?;
    Ok(consumer)
}

/// Reads `topics` from the beginning up to the end each partition had when the read began
/// (kcat's `-e`), so it finishes on a topic that is being written to. Also stops when
/// `on_message` says enough, or when `stall` passes without a message (a broker that reported
/// an end too high, or transaction markers at the end).
pub async fn read_to_end(
    kafka: &KafkaSettings,
    topics: &[&str],
    stall: Duration,
    mut on_message: impl FnMut(&str, &[u8]) -> bool,
) -> Result<(), ClientError> {
    let consumer = reader(kafka, topics)?;
    let assigned = consumer
        .assignment()
        .map_err(|source| ClientError::Assign {
            what: format!("{topics:?}"),
            source: Box::new(source),
        })?;
    let mut ends: std::collections::HashMap<(String, i32), i64> = std::collections::HashMap::new();
    for e in assigned.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
            .map_err(|source| ClientError::Metadata {
                topic: e.topic().to_string(),
                brokers: kafka.brokers.clone(),
                source: Box::new(source),
            })?;
        if high > low {
            ends.insert((e.topic().to_string(), e.partition()), high);
        }
    }
    while !ends.is_empty() {
        match tokio::time::timeout(stall, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "read error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Ok(m)) => {
                let key = (m.topic().to_string(), m.partition());
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
                if on_message(m.topic(), m.payload().unwrap_or_default()) {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Reads from `consumer` until `stop` says enough or nothing arrives for `idle`.
pub async fn read_until(
    consumer: &StreamConsumer,
    idle: Duration,
    mut on_message: impl FnMut(&str, &[u8]) -> bool,
) {
    loop {
        match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => return,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "read error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Ok(m)) => {
                let topic = m.topic().to_string();
                let payload = m.payload().unwrap_or_default().to_vec();
                if on_message(&topic, &payload) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_lines_become_jobs_and_errors_name_the_line() {
        let text = "{\"text\": \"a\"}\n\n{\"job_id\": \"j2\", \"tenant\": \"t\", \"pipeline\": \"p\", \"payload\": {}, \"created_at\": \"2026-01-01T00:00:00Z\"}\n";
        let jobs = jobs_from_jsonl(text, "f.jsonl", "p", "acme").unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].tenant, "acme");
        assert_eq!(jobs[0].payload["text"], "a");
        assert_eq!(jobs[1].job_id, "j2");
        // A payload's own job id is kept (producing the file twice makes the same ids), and a
        // job without tenant or timestamps gets them.
        let kept = jobs_from_jsonl(
            "{\"job_id\": \"t-7\", \"text\": \"b\"}\n{\"payload\": {\"text\": \"c\"}, \"job_id\": \"t-8\"}\n",
            "f.jsonl",
            "p",
            "acme",
        )
        .unwrap();
        assert_eq!(kept[0].job_id, "t-7");
        assert_eq!(kept[0].payload, serde_json::json!({"text": "b"}));
        assert_eq!(
            (kept[1].job_id.as_str(), kept[1].tenant.as_str()),
            ("t-8", "acme")
        );
        let bad_id = jobs_from_jsonl("{\"job_id\": 5}\n", "f.jsonl", "p", "t").unwrap_err();
        assert!(
            bad_id.to_string().contains("f.jsonl:1: job_id 5"),
            "{bad_id}"
        );
        let err = jobs_from_jsonl("{}\n[1]\n", "f.jsonl", "p", "t").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.jsonl:2: a line must be a JSON object (a job or a payload)"
        );
    }
}
