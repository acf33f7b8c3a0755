//! OpenAI-compatible chat completions: OpenAI, OpenRouter, vLLM, Ollama, llm-sim and any
//! server that speaks `POST {base_url}/chat/completions`.

use futures::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::Value;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{
    ChatRequest, Completion, ProviderApi, ProviderError, Usage, WireMessage,
    add_configured_headers, failure, http_error, post_json,
};
use crate::config::Provider;
use crate::envelope::AttemptClass;

/// A chat-completions request body.
#[derive(Debug, Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    logprobs: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a serde_json::Map<String, Value>>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat<'a> {
    JsonSchema { json_schema: JsonSchemaFormat<'a> },
    JsonObject,
}

#[derive(Debug, Serialize)]
struct JsonSchemaFormat<'a> {
    name: &'a str,
    strict: bool,
    schema: &'a RawValue,
}

/// The adapter.
#[derive(Debug)]
pub struct OpenAiCompatible {
    provider: Provider,
    url: String,
    http: reqwest::Client,
    /// Whether the "this is the simulator" warning was given.
    warned_sim: std::sync::atomic::AtomicBool,
}

impl OpenAiCompatible {
    /// An adapter for one configured provider, sharing `http`'s connection pool.
    pub fn new(provider: Provider, http: reqwest::Client) -> Self {
        let url = format!(
            "{}/chat/completions",
            provider.base_url.trim_end_matches('/')
        );
        Self {
            provider,
            url,
            http,
            warned_sim: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn body<'a>(request: &ChatRequest<'a>) -> Body<'a> {
        Body {
            model: request.model,
            messages: request
                .messages
                .iter()
                .map(|m| WireMessage {
                    role: m.role.wire_name(),
                    content: &m.content,
                })
                .collect(),
            response_format: request.json_schema.map(|(name, schema)| {
                if request.native_schema {
                    ResponseFormat::JsonSchema {
                        json_schema: JsonSchemaFormat {
                            name,
                            strict: true,
                            schema,
                        },
                    }
                } else {
                    ResponseFormat::JsonObject
                }
            }),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            logprobs: request.logprobs,
            extra: request.extra,
        }
    }

    fn headers(&self, request: &ChatRequest<'_>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(key) = &request.key
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        {
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        add_configured_headers(&mut h, &self.provider, request);
        h
    }

    async fn send(&self, request: &ChatRequest<'_>) -> Result<Completion, ProviderError> {
        let reply = post_json(
            &self.http,
            &self.url,
            self.headers(request),
            &Self::body(request),
            request.timeout,
            &self.provider,
        )
        .await?;
        let status = reply.status;
        if reply
            .json
            .as_ref()
            .and_then(|j| j.get("id"))
            .and_then(Value::as_str)
            .is_some_and(|id| id.starts_with("chatcmpl-sim-"))
            && !self
                .warned_sim
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                target: "switchyard::simulator",
                provider = %self.provider.name,
                url = %redacted_url(&self.url),
                "this provider answers as llm-sim, the simulator: its answers are made up. Point it at a real provider before production"
            );
        }
        if !(200..300).contains(&status) {
            return Err(http_error(
                &reply,
                reply.json.as_ref().and_then(error_message),
                &self.provider,
            ));
        }
        let Some(body) = reply.json else {
            return Err(failure(
                &self.provider,
                AttemptClass::ProviderBadOutput,
                Some(status),
                "HTTP 200 with a body that is not JSON",
                Usage::default(),
            ));
        };
        let usage = usage(&body);
        let bad = |message: &str| {
            failure(
                &self.provider,
                AttemptClass::ProviderBadOutput,
                Some(status),
                message,
                usage,
            )
        };
        if let Some(message) = error_message(&body) {
            return Err(bad(&format!("HTTP 200 with an error object: {message}")));
        }
        let Some(choice) = body
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return Err(bad("HTTP 200 with no choices"));
        };
        match choice.get("finish_reason").and_then(Value::as_str) {
            Some("length") => {
                return Err(bad("output truncated at max_tokens (finish_reason=length)"));
            }
            Some("content_filter") => {
                return Err(failure(
                    &self.provider,
                    AttemptClass::ContentPolicy,
                    Some(status),
                    "refused by the provider's content filter",
                    usage,
                ));
            }
            _ => {}
        }
        let Some(content) = choice.pointer("/message/content").and_then(Value::as_str) else {
            return Err(bad("HTTP 200 with no message content"));
        };
        Ok(Completion {
            content: content.to_string(),
            usage,
            status,
            logprobs: token_logprobs(choice),
        })
    }
}

/// `choices[i].logprobs.content` of an OpenAI-format choice: each token with its logprob.
pub fn token_logprobs(choice: &Value) -> Option<Vec<crate::provider::TokenLogprob>> {
    let content = choice.pointer("/logprobs/content")?.as_array()?;
    content
        .iter()
        .map(|t| {
            Some(crate::provider::TokenLogprob {
                token: t.get("token")?.as_str()?.to_string(),
                logprob: t.get("logprob")?.as_f64()?,
            })
        })
        .collect()
}

/// `scheme://host[:port]/path` without user info or query.
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}{path}")
}

impl ProviderApi for OpenAiCompatible {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        Box::pin(self.send(request))
    }
}

fn error_message(body: &Value) -> Option<String> {
    let e = body.get("error")?;
    Some(
        e.get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string()),
    )
}

fn usage(body: &Value) -> Usage {
    let n = |p: &str| body.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: n("/usage/prompt_tokens"),
        completion_tokens: n("/usage/completion_tokens"),
        cached_tokens: n("/usage/prompt_tokens_details/cached_tokens"),
        reasoning_tokens: n("/usage/completion_tokens_details/reasoning_tokens"),
        reported_cost: body
            .pointer("/usage/cost")
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0)
            .map(|c| crate::money::MicroUsd((c * 1e6).round() as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Message;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn body_asks_for_the_schema_natively_or_json_mode() {
        let messages = [Message {
            role: crate::provider::Role::User,
            content: "hi".into(),
        }];
        let schema = RawValue::from_string(r#"{"type": "object"}"#.into()).unwrap();
        let mut r = ChatRequest {
            model: "m",
            messages: &messages,
            json_schema: Some(("out", &schema)),
            native_schema: true,
            max_tokens: Some(10),
            temperature: None,
            timeout: Duration::from_secs(1),
            key: None,
            metadata: None,
            logprobs: false,
            extra: None,
        };
        let wire = |r: &ChatRequest<'_>| -> Value {
            serde_json::from_slice(&serde_json::to_vec(&OpenAiCompatible::body(r)).unwrap())
                .unwrap()
        };
        let b = wire(&r);
        assert_eq!(b["model"], "m");
        assert_eq!(b["messages"][0]["role"], "user");
        assert_eq!(b["messages"][0]["content"], "hi");
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["strict"], true);
        assert_eq!(b["response_format"]["json_schema"]["name"], "out");
        assert_eq!(
            b["response_format"]["json_schema"]["schema"]["type"],
            "object"
        );
        assert_eq!(b["max_tokens"], 10);
        assert!(b.get("temperature").is_none());
        r.native_schema = false;
        assert_eq!(wire(&r)["response_format"], json!({"type": "json_object"}));
        assert!(
            wire(&r).get("logprobs").is_none(),
            "only asked for when the gate uses them"
        );
        r.logprobs = true;
        assert_eq!(wire(&r)["logprobs"], true);
    }

    #[test]
    fn urls_lose_credentials_before_they_are_printed() {
        assert_eq!(
            redacted_url("https://u:pw@host:8443/v1/chat?key=abc"),
            "https://host:8443/v1/chat"
        );
        assert_eq!(
            redacted_url("http://127.0.0.1:8089/simcloud/v1/chat/completions"),
            "http://127.0.0.1:8089/simcloud/v1/chat/completions"
        );
    }

    #[test]
    fn usage_reads_cached_and_reasoning_tokens() {
        let u = usage(
            &json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}}}),
        );
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (10, 5, 4, 2)
        );
        assert_eq!(u.reported_cost, None);
        let u = usage(
            &json!({"usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": 0.000123}}),
        );
        assert_eq!(u.reported_cost, Some(crate::money::MicroUsd(123)));
    }
}
