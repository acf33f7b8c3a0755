//! Dead-letter tooling: list what is on the dead-letter topic, and replay chosen dead letters to
//! the stage where they failed, with the redrive count incremented.
//!
//! Replay works from the whole picture: the results and dead-letter topics are read, each job's
//! latest dead letter is taken, and jobs that have since produced a result, that are not
//! replayable, or that reached the redrive cap stay put. So running `replay` twice does not
//! send a job twice.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Pipeline;
use crate::envelope::{DeadLetter, Escalation, Intake, Original};
use crate::kafka::KafkaSettings;
use crate::kafka::client::{ClientError, read_to_end, send_messages};

/// Which dead letters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this reason (snake_case).
    pub reason: Option<String>,
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this job's (of any tenant, unless `tenant` is set too).
    pub job_id: Option<String>,
    /// Only dead letters at or after this time.
    pub since: Option<OffsetDateTime>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl Filter {
    fn admits(&self, d: &DeadLetter) -> bool {
        self.reason
            .as_deref()
            .is_none_or(|r| d.reason.as_str() == r)
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| d.tenant.as_deref() == Some(t))
            && self
                .job_id
                .as_deref()
                .is_none_or(|j| d.job_id.as_deref() == Some(j))
            && self.since.is_none_or(|s| d.failed_at >= s)
    }
}

/// Everything on a pipeline's results and dead-letter topics.
#[derive(Debug, Default)]
pub struct Picture {
    /// Every dead letter, in topic order per partition.
    pub dead: Vec<DeadLetter>,
    /// Jobs with a result, as (tenant, job id): job ids are the tenants' own, so two tenants'
    /// job 42 are two jobs.
    pub finished: std::collections::HashSet<(String, String)>,
}

impl Picture {
    /// Whether this dead letter's job has a result since.
    pub fn resolved(&self, d: &DeadLetter) -> bool {
        match (&d.tenant, &d.job_id) {
            (Some(t), Some(j)) => self.finished.contains(&(t.to_string(), j.to_string())),
            _ => false,
        }
    }
}

/// The (tenant, job id) of a result, read without decoding the whole of it.
fn result_owner(payload: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Owner {
        tenant: String,
        job_id: String,
    }
    let o: Owner = serde_json::from_slice(payload).ok()?;
    Some((o.tenant, o.job_id))
}

/// Reads both topics to the ends they had when the read began (or until `idle` passes
/// without a message).
pub async fn read_picture(
    kafka: &KafkaSettings,
    pipeline: &Pipeline,
    idle: Duration,
) -> Result<Picture, ClientError> {
    let mut picture = Picture::default();
    let dlq = pipeline.topics.dlq.clone();
    let topics = [
        pipeline.topics.results.as_str(),
        pipeline.topics.dlq.as_str(),
    ];
    let mut strangers = 0usize;
    read_to_end(kafka, &topics, idle, |topic, payload| {
        if topic == dlq {
            match serde_json::from_slice::<DeadLetter>(payload) {
                Ok(d) => picture.dead.push(d),
                Err(_) => strangers += 1,
            }
        } else if let Some(owner) = result_owner(payload) {
            picture.finished.insert(owner);
        }
        false
    })
    .await?;
    if strangers > 0 {
        tracing::warn!(
            messages = strangers,
            topic = %dlq,
            "messages on the dead-letter topic that are not dead letters were left out"
        );
    }
    Ok(picture)
}

/// What a bounded read keeps of the dead-letter topic.
#[derive(Debug, Clone, Copy)]
pub struct Keep<'a> {
    /// What to keep (a replay asks for one tenant's job).
    pub filter: &'a Filter,
    /// At most this many, the newest (per partition order).
    pub at_most: usize,
    /// Drop each kept dead letter's original message and attempts (a listing shows neither).
    pub slim: bool,
}

/// [`read_picture`] with bounded memory, for a server answering many requests: the dead-letter
/// topic is read first, keeping only what `keep` asks for; then the results topic, keeping
/// only the ids of those dead letters' jobs. Whatever the topics hold, one request holds at most
/// `keep.at_most` dead letters (slim ones, for a listing) and as many ids.
pub async fn read_picture_bounded(
    kafka: &KafkaSettings,
    pipeline: &Pipeline,
    idle: Duration,
    keep: Keep<'_>,
) -> Result<Picture, ClientError> {
    let mut dead = std::collections::VecDeque::new();
    read_to_end(kafka, &[&pipeline.topics.dlq], idle, |_, payload| {
        if let Ok(mut d) = serde_json::from_slice::<DeadLetter>(payload) {
            if keep.filter.admits(&d) {
                if keep.slim {
                    d.original = crate::envelope::Original::Utf8(String::new());
                    d.attempts = Vec::new();
                    d.detail = d.detail.chars().take(500).collect();
                }
                dead.push_back(d);
                if dead.len() > keep.at_most {
                    dead.pop_front();
                }
            }
        }
        false
    })
    .await?;
    let ids: std::collections::HashSet<(String, String)> = dead
        .iter()
        .filter_map(|d| {
            Some((
                d.tenant.as_ref()?.to_string(),
                d.job_id.as_ref()?.to_string(),
            ))
        })
        .collect();
    let mut finished = std::collections::HashSet::new();
    if !ids.is_empty() {
        read_to_end(kafka, &[&pipeline.topics.results], idle, |_, payload| {
            if let Some(owner) = result_owner(payload)
                && ids.contains(&owner)
            {
                finished.insert(owner);
            }
            false
        })
        .await?;
    }
    Ok(Picture {
        dead: dead.into(),
        finished,
    })
}

/// One line of `dlq list`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Listed {
    /// When it failed.
    pub failed_at: String,
    /// Job id (empty for unreadable input).
    pub job_id: String,
    /// Tenant.
    pub tenant: String,
    /// Stage.
    pub stage: String,
    /// Reason.
    pub reason: String,
    /// Whether a replay may succeed.
    pub replayable: bool,
    /// Times replayed.
    pub redrive_count: u32,
    /// Whether the job has since produced a result.
    pub resolved: bool,
    /// What went wrong.
    pub detail: String,
}

/// The dead letters that pass `filter`, newest last.
pub fn list(picture: &Picture, filter: &Filter) -> Vec<Listed> {
    let mut out: Vec<Listed> = picture
        .dead
        .iter()
        .filter(|d| filter.admits(d))
        .map(|d| Listed {
            failed_at: d
                .failed_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            job_id: d.job_id.clone().unwrap_or_default().to_string(),
            tenant: d.tenant.clone().unwrap_or_default().to_string(),
            stage: d.stage.to_string(),
            reason: d.reason.as_str().to_string(),
            replayable: d.replayable,
            redrive_count: d.redrive_count,
            resolved: picture.resolved(d),
            detail: d.detail.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.failed_at.cmp(&b.failed_at));
    if let Some(n) = filter.limit {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    out
}

/// What replay decided for one job.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    /// Job id.
    pub job_id: String,
    /// Tenant.
    pub tenant: String,
    /// Stage it goes back to.
    pub stage: String,
    /// The topic it goes to (when replayed).
    pub topic: Option<String>,
    /// `replay`, or why not.
    pub action: String,
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Topic.
    pub topic: String,
    /// Key (the job id).
    pub key: String,
    /// Value.
    pub value: Vec<u8>,
    /// The tenant header, when the pipeline binds tenants by header (`(name, tenant)`): the
    /// dead letter's tenant was bound at intake, the replay carries it on.
    pub header: Option<(String, String)>,
}

/// Chooses what to replay and builds the messages.
pub fn plan_replay(
    picture: &Picture,
    pipeline: &Pipeline,
    filter: &Filter,
    max_redrives: u32,
) -> (Vec<Decision>, Vec<Outgoing>) {
    // Each job's latest dead letter.
    let mut latest: HashMap<(&str, &str), &DeadLetter> = HashMap::new();
    for d in &picture.dead {
        let (Some(tenant), Some(id)) = (d.tenant.as_deref(), d.job_id.as_deref()) else {
            continue;
        };
        let id = (tenant, id);
        let newer = latest
            .get(&id)
            .is_none_or(|cur| (d.redrive_count, d.failed_at) >= (cur.redrive_count, cur.failed_at));
        if newer {
            latest.insert(id, d);
        }
    }
    let mut chosen: Vec<&DeadLetter> = latest.into_values().filter(|d| filter.admits(d)).collect();
    chosen.sort_by(|a, b| {
        a.failed_at
            .cmp(&b.failed_at)
            .then_with(|| a.job_id.cmp(&b.job_id))
    });
    if let Some(n) = filter.limit {
        chosen.truncate(n);
    }
    let mut decisions = Vec::new();
    let mut messages = Vec::new();
    for d in chosen {
        let job_id = d.job_id.clone().unwrap_or_default();
        let tenant = d.tenant.clone().unwrap_or_default();
        let mut decide = |topic: Option<String>, action: String| {
            decisions.push(Decision {
                job_id: job_id.to_string(),
                tenant: tenant.to_string(),
                stage: d.stage.to_string(),
                topic,
                action,
            })
        };
        if picture.resolved(d) {
            decide(None, "skip: the job has a result since".into());
            continue;
        }
        if !d.replayable {
            decide(
                None,
                format!("skip: {} is not replayable", d.reason.as_str()),
            );
            continue;
        }
        if d.redrive_count >= max_redrives {
            decide(
                None,
                format!(
                    "skip: already replayed {} times (cap {max_redrives})",
                    d.redrive_count
                ),
            );
            continue;
        }
        let Original::Json(value) = &d.original else {
            decide(None, "skip: the original is not a job".into());
            continue;
        };
        let Ok(mut job) = serde_json::from_value::<Intake>(value.clone()) else {
            decide(None, "skip: the original is not an intake job".into());
            continue;
        };
        job.redrive_count = d.redrive_count + 1;
        let Some(stage) = pipeline.stages.iter().find(|s| s.name == d.stage) else {
            decide(
                None,
                format!("skip: pipeline has no stage `{}` any more", d.stage),
            );
            continue;
        };
        let body = if stage.index == 0 {
            serde_json::to_vec(&job)
        } else {
            // A later stage takes an escalation: rebuild it from what the dead letter carries.
            serde_json::to_vec(&Escalation {
                job: job.clone(),
                to_stage: stage.name.as_str().into(),
                escalations: d.escalations.clone(),
                attempts: d.attempts.clone(),
            })
        };
        // Back to the intake: where the job's tenant is bound (its own topic, or the header).
        let (topic, header) = if stage.index == 0 && stage.input_topic == pipeline.topics.intake {
            let header = match &pipeline.tenant_binding {
                crate::config::TenantBinding::Header(h) => {
                    Some((h.clone(), job.tenant.to_string()))
                }
                _ => None,
            };
            (pipeline.tenant_intake_topic(&job.tenant), header)
        } else {
            (stage.input_topic.clone(), None)
        };
        match body {
            Ok(bytes) => {
                messages.push(Outgoing {
                    topic: topic.clone(),
                    key: job.job_id.to_string(),
                    value: bytes,
                    header,
                });
                decide(
                    Some(topic),
                    format!("replay (redrive {})", job.redrive_count),
                );
            }
            Err(e) => decide(None, format!("skip: cannot encode: {e}")),
        }
    }
    (decisions, messages)
}

/// Sends the planned messages.
pub async fn send(kafka: &KafkaSettings, messages: Vec<Outgoing>) -> Result<usize, ClientError> {
    let out: Vec<crate::kafka::client::Outgoing<'_>> = messages
        .iter()
        .map(|m| crate::kafka::client::Outgoing {
            topic: &m.topic,
            key: &m.key,
            value: &m.value,
            header: m.header.as_ref().map(|(h, v)| (h.as_str(), v.as_str())),
        })
        .collect();
    send_messages(kafka, &out).await
}
