//! Provider adapters: one trait, one file per API family. An adapter turns a [`ChatRequest`]
//! into the provider's wire format, sends it, and turns what comes back into a [`Completion`]
//! or a [`ProviderError`] whose [`AttemptClass`] decides the route's next move.

pub mod anthropic;
pub mod openai;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::{ApiFamily, Provider};
use crate::envelope::AttemptClass;

/// A chat message role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions.
    System,
    /// The request.
    User,
    /// An earlier answer (used by the repair re-ask).
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What they say.
    pub content: String,
}

/// One message as both API families put it on the wire.
#[derive(Debug, serde::Serialize)]
pub(crate) struct WireMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

impl Role {
    /// The role's name on the wire.
    pub fn wire_name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A provider-neutral request. It borrows everything: a job's prompt and the stage's schema
/// are serialized straight into the request body, never copied per attempt.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The provider's id for the model.
    pub model: &'a str,
    /// The conversation.
    pub messages: &'a [Message],
    /// Ask for JSON conforming to this schema (name, schema as JSON text), where the model
    /// supports it.
    pub json_schema: Option<(&'a str, &'a RawValue)>,
    /// Whether the model takes `response_format: json_schema` (else JSON mode is asked for).
    pub native_schema: bool,
    /// Upper bound on completion tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Time limit for the whole call.
    pub timeout: Duration,
    /// The key to send (none for keyless servers).
    pub key: Option<&'a crate::secret::Secret>,
    /// The job's metadata; entries the provider lists in `forward_metadata` go out as headers.
    pub metadata: Option<&'a std::collections::BTreeMap<String, String>>,
    /// Ask for token logprobs (OpenAI-compatible providers that return them).
    pub logprobs: bool,
    /// Fields added to the request body as they are (`extra_body`, OpenRouter's `provider`).
    pub extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens (including cached ones).
    pub prompt_tokens: u64,
    /// Completion tokens (including reasoning ones).
    pub completion_tokens: u64,
    /// Prompt tokens served from cache.
    pub cached_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// The cost the provider reported (OpenRouter's `usage.cost`), in micro-dollars.
    pub reported_cost: Option<crate::money::MicroUsd>,
}

/// A usable answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The assistant message's text.
    pub content: String,
    /// Token counts.
    pub usage: Usage,
    /// HTTP status (200).
    pub status: u16,
    /// The answer's tokens with their logprobs, when asked for and returned.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// One output token and its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f64,
}

/// A failed call, classified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class:?} ({status:?}): {message}")]
pub struct ProviderError {
    /// What kind of failure, which decides the next move.
    pub class: AttemptClass,
    /// HTTP status, when an answer came back.
    pub status: Option<u16>,
    /// What happened, scrubbed of secrets.
    pub message: String,
    /// How long the provider asked us to wait (429/503 Retry-After).
    pub retry_after: Option<Duration>,
    /// Tokens billed even though the call failed (a truncated answer, say).
    pub usage: Usage,
}

/// One API family's adapter.
pub trait ProviderApi: Send + Sync + std::fmt::Debug {
    /// Sends one request.
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>>;
}

/// Builds the adapter for a configured provider.
pub fn adapter(provider: &Provider, http: reqwest::Client) -> Arc<dyn ProviderApi> {
    match provider.api {
        ApiFamily::Openai | ApiFamily::Openrouter => {
            Arc::new(openai::OpenAiCompatible::new(provider.clone(), http))
        }
        ApiFamily::Anthropic => Arc::new(anthropic::Anthropic::new(provider.clone(), http)),
    }
}

/// Classifies an HTTP error status (and the error text, for the 400s that name their cause).
pub fn classify_status(status: u16, message: &str) -> AttemptClass {
    let lower = message.to_ascii_lowercase();
    match status {
        // A moderation refusal of one prompt (OpenRouter answers 403 "input was flagged") is
        // the job's content-policy outcome, not a failing key.
        400 | 422 if is_content_policy_message(&lower) => AttemptClass::ContentPolicy,
        403 if is_moderation_refusal(&lower) => AttemptClass::ContentPolicy,
        401 | 403 => AttemptClass::Auth,
        402 => AttemptClass::OutOfCredit,
        404 => AttemptClass::Catalog,
        408 => AttemptClass::Transient,
        413 => AttemptClass::ContextWindow,
        429 => AttemptClass::RateLimited,
        400 | 422 if is_context_message(&lower) => AttemptClass::ContextWindow,
        400..=499 => AttemptClass::InvalidRequest,
        _ => AttemptClass::Transient,
    }
}

/// A 403 that refuses this input (OpenRouter's moderation), not the account or key: "your
/// account has been flagged" stays an auth failure.
fn is_moderation_refusal(lower: &str) -> bool {
    ["input was flagged", "flagged by moderation", "moderation"]
        .iter()
        .any(|p| lower.contains(p))
        && !lower.contains("account")
}

fn is_context_message(lower: &str) -> bool {
    [
        "context length",
        "context_length",
        "context window",
        "maximum context",
        "too many tokens",
        "prompt is too long",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

fn is_content_policy_message(lower: &str) -> bool {
    [
        "content_filter",
        "content policy",
        "content_policy",
        "safety system",
        "flagged",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// Parses a Retry-After header: delay-seconds or an HTTP date, at most
/// [`crate::limit::MAX_COOL_DOWN`] (a provider cannot rest a key for a century, nor overflow a
/// clock with `1e20`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    let max = crate::limit::MAX_COOL_DOWN;
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(max.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(max))
}

/// The largest provider reply read; a longer one is a failed attempt (a 400 MB reply must not
/// take the worker's memory with it).
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn statuses_map_to_the_design_table() {
        let cases = [
            (401, "", AttemptClass::Auth),
            (403, "", AttemptClass::Auth),
            (402, "", AttemptClass::OutOfCredit),
            (404, "model not found", AttemptClass::Catalog),
            (408, "", AttemptClass::Transient),
            (413, "", AttemptClass::ContextWindow),
            (429, "", AttemptClass::RateLimited),
            (500, "", AttemptClass::Transient),
            (502, "", AttemptClass::Transient),
            (503, "", AttemptClass::Transient),
            (529, "", AttemptClass::Transient),
            (
                400,
                "This model's maximum context length is 8192 tokens",
                AttemptClass::ContextWindow,
            ),
            (
                400,
                "Your request was rejected by our content_filter",
                AttemptClass::ContentPolicy,
            ),
            (
                400,
                "messages: field required",
                AttemptClass::InvalidRequest,
            ),
        ];
        for (status, msg, class) in cases {
            assert_eq!(classify_status(status, msg), class, "{status} {msg}");
        }
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:30 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", SystemTime::now()), None);
        // What a hostile provider may send: bounded, never a panic.
        let max = crate::limit::MAX_COOL_DOWN;
        assert_eq!(parse_retry_after("1e20", now), Some(max));
        assert_eq!(parse_retry_after("18000000000000000000", now), Some(max));
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(max)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
    }

    #[test]
    fn a_moderation_refusal_is_content_policy_not_a_bad_key() {
        assert_eq!(
            classify_status(403, "Input was flagged by moderation"),
            AttemptClass::ContentPolicy
        );
        assert_eq!(classify_status(403, "Forbidden"), AttemptClass::Auth);
        assert_eq!(
            classify_status(403, "Your account has been flagged"),
            AttemptClass::Auth
        );
    }
}

/// What an HTTP call to a provider brought back, the same for every API family.
#[derive(Debug)]
pub(crate) struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Retry-After, parsed.
    pub retry_after: Option<Duration>,
    /// The body, parsed as JSON when it is.
    pub json: Option<Value>,
    /// The body as text, kept for error replies and bodies that are not JSON.
    pub text: String,
}

/// Error text safe to keep: secrets replaced, at most 600 bytes.
pub(crate) fn scrubbed<'a>(
    text: &str,
    secrets: impl IntoIterator<Item = &'a crate::secret::Secret>,
) -> String {
    let mut t = crate::secret::scrub(text, secrets);
    if t.len() > 600 {
        let mut cut = 600;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push('…');
    }
    t
}

/// POSTs `body` as JSON and reads the reply. Transport failures (timeout, connection) come
/// back as transient errors whose text never shows the URL's credentials.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    url: &str,
    headers: reqwest::header::HeaderMap,
    body: &impl serde::Serialize,
    timeout: Duration,
    provider: &Provider,
) -> Result<Reply, ProviderError> {
    let started = std::time::Instant::now();
    let transport = |e: reqwest::Error| {
        let cause = std::error::Error::source(&e)
            .map(|c| c.to_string())
            .unwrap_or_default();
        let where_ = openai::redacted_url(url);
        let message = if e.is_timeout() {
            format!(
                "timed out after {:?} (limit {timeout:?})",
                started.elapsed()
            )
        } else if e.is_connect() {
            format!("cannot connect to {where_}: {cause}")
        } else {
            format!("request to {where_} failed: {cause}")
        };
        ProviderError {
            class: AttemptClass::Transient,
            status: None,
            message: scrubbed(&message, provider.keys.iter().map(|k| &k.secret)),
            retry_after: None,
            usage: Usage::default(),
        }
    };
    let response = http
        .post(url)
        .headers(headers)
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let too_long = |read: usize| ProviderError {
        class: AttemptClass::ProviderBadOutput,
        status: Some(status),
        message: format!(
            "the reply from {} is longer than {} MiB ({read} bytes or more); not read",
            openai::redacted_url(url),
            MAX_REPLY_BYTES / (1024 * 1024)
        ),
        retry_after: None,
        usage: Usage::default(),
    };
    if let Some(n) = response.content_length()
        && n > MAX_REPLY_BYTES as u64
    {
        return Err(too_long(usize::try_from(n).unwrap_or(usize::MAX)));
    }
    let mut response = response;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if bytes.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(too_long(bytes.len() + chunk.len()));
        }
        bytes.extend_from_slice(&chunk);
    }
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    // The text is only read for errors; a successful JSON reply skips the copy.
    let text = if json.is_none() || !(200..300).contains(&status) {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::new()
    };
    Ok(Reply {
        status,
        retry_after,
        json,
        text,
    })
}

/// A failure of `class`, its text scrubbed of the provider's keys.
pub(crate) fn failure(
    provider: &Provider,
    class: AttemptClass,
    status: Option<u16>,
    message: &str,
    usage: Usage,
) -> ProviderError {
    ProviderError {
        class,
        status,
        message: scrubbed(message, provider.keys.iter().map(|k| &k.secret)),
        retry_after: None,
        usage,
    }
}

/// Adds the provider's configured extra headers.
pub(crate) fn add_configured_headers(
    h: &mut reqwest::header::HeaderMap,
    provider: &Provider,
    request: &ChatRequest<'_>,
) {
    use reqwest::header::{HeaderName, HeaderValue};
    for (k, v) in &provider.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    }
    let Some(metadata) = request.metadata else {
        return;
    };
    for name in &provider.forward_metadata {
        if let Some(v) = metadata.get(name)
            && let (Ok(k), Ok(v)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::from_str(v),
            )
        {
            h.insert(k, v);
        }
    }
}

/// The classified error for a non-2xx reply; `message` is the provider's own error text.
pub(crate) fn http_error(
    reply: &Reply,
    message: Option<String>,
    provider: &Provider,
) -> ProviderError {
    let message = message.unwrap_or_else(|| reply.text.clone());
    ProviderError {
        class: classify_status(reply.status, &message),
        status: Some(reply.status),
        message: scrubbed(
            &format!("HTTP {}: {message}", reply.status),
            provider.keys.iter().map(|k| &k.secret),
        ),
        retry_after: reply.retry_after,
        usage: Usage::default(),
    }
}

/// The HTTP client every adapter of a process shares (one connection pool).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .redirect(same_origin_redirects())
        .build()
}

/// Redirects are followed only to the same origin (scheme, host and port): the request carries
/// a key and the job's text, which must not follow a redirect to another host.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !same {
            attempt
                .error("redirect to another origin refused (it would carry the key and the prompt)")
        } else if attempt.previous().len() > 5 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

/// Every provider a pipeline uses, by name: the seam between the attempt loop and the
/// providers' APIs. The product fills it with HTTP adapters ([`Adapters::new`]); tests insert
/// scripted fakes ([`Adapters::from_apis`]).
#[derive(Debug, Default, Clone)]
pub struct Adapters {
    by_name: std::collections::HashMap<String, Arc<dyn ProviderApi>>,
}

impl Adapters {
    /// An HTTP adapter for each configured provider, sharing `http`'s connection pool.
    pub fn new<'a>(
        providers: impl IntoIterator<Item = &'a Provider>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            by_name: providers
                .into_iter()
                .map(|p| (p.name.clone(), adapter(p, http.clone())))
                .collect(),
        }
    }

    /// Any implementations of the API, by provider name.
    pub fn from_apis(apis: impl IntoIterator<Item = (String, Arc<dyn ProviderApi>)>) -> Self {
        Self {
            by_name: apis.into_iter().collect(),
        }
    }

    /// Sends the request to `provider` (capacity must already have been granted).
    pub async fn call(
        &self,
        provider: &str,
        request: &ChatRequest<'_>,
    ) -> Result<Completion, ProviderError> {
        let Some(adapter) = self.by_name.get(provider) else {
            return Err(ProviderError {
                class: AttemptClass::Catalog,
                status: None,
                message: format!("provider `{provider}` is not configured"),
                retry_after: None,
                usage: Usage::default(),
            });
        };
        // Every key the call could carry is scrubbed from what the provider said, the
        // tenant's own (BYOK) key included, not only the provider's shared keys.
        adapter.complete(request).await.map_err(|mut e| {
            if let Some(key) = request.key {
                e.message = crate::secret::scrub(&e.message, [key]);
            }
            e
        })
    }
}
