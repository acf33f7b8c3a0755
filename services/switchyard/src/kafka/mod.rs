//! Kafka client settings shared by every consumer and producer Switchyard creates, with
//! user overrides (`-X key=value`, as kcat takes them) for security and tuning on real clusters.

pub mod client;

use rdkafka::ClientConfig;

/// Properties that at-least-once delivery depends on.
const PROTECTED: &[&str] = &[
    "enable.auto.offset.store",
    "enable.auto.commit",
    "enable.idempotence",
    "acks",
    "group.id",
    // Set with `--from`, which also checks and says what a new group will do.
    "auto.offset.reset",
];

/// Repeated log lines collapsed: during a broker outage librdkafka reports the same failure
/// many times a second. The first line of a kind in each interval is logged with how many like
/// it were held back since the last one; the rest are counted.
#[derive(Debug)]
pub struct Repeats {
    interval: std::time::Duration,
    seen: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
}

impl Repeats {
    /// Collapses repeats within `interval`.
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            seen: std::sync::Mutex::default(),
        }
    }

    /// `Some(held_back)` when a line of `kind` should be logged now (with the number of such
    /// lines held back since the last one logged), `None` when it is a repeat to count.
    pub fn admit(&self, kind: &str) -> Option<u64> {
        // Numbers (ports, milliseconds, counts) vary between repeats of one failure.
        let key: String = kind
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(120)
            .collect();
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(&key) {
            Some((since, held)) if now.duration_since(*since) < self.interval => {
                *held += 1;
                None
            }
            Some((since, held)) => {
                let n = *held;
                *since = now;
                *held = 0;
                Some(n)
            }
            None => {
                if seen.len() >= 1000 {
                    seen.clear();
                }
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// A Kafka error as text that never includes a configuration value (it may be a secret).
pub fn error_text(e: &rdkafka::error::KafkaError) -> String {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, description, key, _) => {
            format!("invalid Kafka option `{key}`: {description}")
        }
        other => other.to_string(),
    }
}

/// A refused `-X key=value` option. Values are never echoed: they may be passwords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// Not `key=value`.
    #[error("a Kafka option (-X) is not of the form key=value")]
    NotKeyValue,
    /// An option Switchyard sets itself.
    #[error(
        "Kafka option `{0}` cannot be overridden: Switchyard sets it to keep at-least-once delivery"
    )]
    Protected(String),
    /// `key=env:NAME` names a variable that is not set.
    #[error("Kafka option `{key}` reads the environment variable {var}, which is not set")]
    MissingEnv {
        /// The option.
        key: String,
        /// The variable.
        var: String,
    },
    /// `key=file:PATH` names a file that cannot be read.
    #[error("Kafka option `{key}` reads the file {path}: {why}")]
    File {
        /// The option.
        key: String,
        /// The file.
        path: String,
        /// Why it could not be read.
        why: String,
    },
}

/// A `-X` value as given, or read from the environment (`env:NAME`) or a file (`file:PATH`,
/// surrounding whitespace trimmed): secrets such as `sasl.password` need not appear on the
/// command line, where the process list shows them.
fn secret_value(key: &str, v: &str) -> Result<String, OptionError> {
    if let Some(var) = v.strip_prefix("env:") {
        return std::env::var(var).map_err(|_| OptionError::MissingEnv {
            key: key.to_string(),
            var: var.to_string(),
        });
    }
    if let Some(path) = v.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| OptionError::File {
                key: key.to_string(),
                path: path.to_string(),
                why: e.to_string(),
            });
    }
    Ok(v.to_string())
}

/// Where the brokers are and any extra librdkafka properties.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Extra librdkafka properties, applied last (e.g. `security.protocol=SASL_SSL`).
    pub options: Vec<(String, String)>,
    /// Where a stage's consumer group without committed offsets starts.
    pub start_from: StartFrom,
}

/// Where a consumer group that has no committed offsets starts reading (a group that has them
/// always resumes from them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest message still on the topic: everything there is processed (and paid for).
    #[default]
    Earliest,
    /// The end: only messages produced from now on.
    Latest,
    /// Nowhere: a group without committed offsets is an error (production, where a new group
    /// prefix is a mistake).
    Committed,
}

impl StartFrom {
    /// librdkafka's `auto.offset.reset` for it.
    pub fn offset_reset(self) -> &'static str {
        match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
            StartFrom::Committed => "error",
        }
    }
}

impl KafkaSettings {
    /// Settings for `brokers` with no extra properties.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            options: Vec::new(),
            start_from: StartFrom::default(),
        }
    }

    /// Parses `key=value` overrides. Options that would break at-least-once delivery are
    /// refused.
    pub fn with_options(mut self, options: &[String]) -> Result<Self, OptionError> {
        for o in options {
            // Never echo the option: its value may be a password.
            let (k, v) = o.split_once('=').ok_or(OptionError::NotKeyValue)?;
            if PROTECTED.contains(&k.trim()) {
                return Err(OptionError::Protected(k.trim().to_string()));
            }
            let key = k.trim().to_string();
            let value = secret_value(&key, v.trim())?;
            self.options.push((key, value));
        }
        Ok(self)
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    fn apply(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }

    /// A consumer in `group` that commits only when told to: a stage commits, every 250 ms,
    /// each partition's watermark (every earlier message's output acknowledged) with the
    /// offsets finished past it in the commit's metadata.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", self.start_from.offset_reset())
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", "100")
            // Prefetch at most 8 MB per consumer: with the in-flight caps this bounds memory,
            // whatever the backlog (librdkafka's default is 64 MB).
            .set("queued.max.messages.kbytes", "8192")
            // Consumer lag per partition for /metrics comes from librdkafka's statistics.
            .set("statistics.interval.ms", "5000")
            .set("enable.partition.eof", "false");
        self.apply(c)
    }

    /// An idempotent producer: every send is acknowledged by all in-sync replicas, retried
    /// without duplicates or reordering.
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .set("compression.type", "lz4");
        self.apply(c)
    }

    /// A plain reader (no group commits), for tools that read topics back.
    pub fn reader(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", "100")
            .set("enable.partition.eof", "false");
        self.apply(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_of_a_failure_are_counted_not_logged() {
        let r = Repeats::new(std::time::Duration::from_millis(200));
        assert_eq!(
            r.admit("Connect to 127.0.0.1:9092 failed (after 3ms)"),
            Some(0)
        );
        for ms in 0..50 {
            assert_eq!(
                r.admit(&format!("Connect to 127.0.0.1:9092 failed (after {ms}ms)")),
                None
            );
        }
        assert_eq!(r.admit("another failure"), Some(0));
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(
            r.admit("Connect to 127.0.0.1:9092 failed (after 1ms)"),
            Some(50)
        );
    }

    #[test]
    fn option_values_may_come_from_a_file_and_never_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "s3cret-value\n").unwrap();
        let k = KafkaSettings::new("b:9092")
            .with_options(&[
                format!("sasl.password=file:{}", secret.display()),
                "security.protocol=SASL_SSL".into(),
            ])
            .unwrap();
        assert_eq!(
            k.options,
            [
                ("sasl.password".to_string(), "s3cret-value".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string())
            ]
        );
        let missing = KafkaSettings::new("b:9092")
            .with_options(&["sasl.password=env:SWITCHYARD_TEST_UNSET_VARIABLE".into()])
            .unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("SWITCHYARD_TEST_UNSET_VARIABLE")
        );
        let gone = KafkaSettings::new("b:9092")
            .with_options(&["sasl.password=file:/nonexistent/password".into()])
            .unwrap_err();
        assert!(gone.to_string().contains("/nonexistent/password"));
    }
}
