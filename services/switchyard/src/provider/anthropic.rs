//! Anthropic Messages: `POST {base_url}/messages` with `x-api-key` and `anthropic-version`,
//! the system prompt as a top-level field, and structured output through one forced tool whose
//! input schema is the stage's output schema (the answer is the tool call's input).

use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{
    ChatRequest, Completion, ProviderApi, ProviderError, Role, Usage, WireMessage,
    add_configured_headers, failure, http_error, post_json,
};
use crate::config::Provider;
use crate::envelope::AttemptClass;

/// The API version sent in `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires max_tokens; used when the stage sets none.
const DEFAULT_MAX_TOKENS: u32 = 1024;

/// A Messages request body.
#[derive(Debug, Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<[Tool<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Serialize)]
struct Tool<'a> {
    name: &'a str,
    description: &'static str,
    input_schema: &'a RawValue,
}

#[derive(Debug, Serialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
}

/// The adapter.
#[derive(Debug)]
pub struct Anthropic {
    provider: Provider,
    url: String,
    http: reqwest::Client,
}

impl Anthropic {
    /// An adapter for one configured provider.
    pub fn new(provider: Provider, http: reqwest::Client) -> Self {
        let url = format!("{}/messages", provider.base_url.trim_end_matches('/'));
        Self {
            provider,
            url,
            http,
        }
    }

    fn body<'a>(request: &ChatRequest<'a>) -> Body<'a> {
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        Body {
            model: request.model,
            max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            messages: request
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| WireMessage {
                    role: if m.role == Role::Assistant {
                        "assistant"
                    } else {
                        "user"
                    },
                    content: &m.content,
                })
                .collect(),
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            temperature: request.temperature,
            tools: request.json_schema.map(|(name, input_schema)| {
                [Tool {
                    name,
                    description: "Record the answer. Its input must follow the schema exactly.",
                    input_schema,
                }]
            }),
            tool_choice: request
                .json_schema
                .map(|(name, _)| ToolChoice { kind: "tool", name }),
            extra: request.extra,
        }
    }

    fn headers(&self, request: &ChatRequest<'_>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        if let Some(key) = &request.key
            && let Ok(mut v) = HeaderValue::from_str(key.expose())
        {
            v.set_sensitive(true);
            h.insert("x-api-key", v);
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
        if !(200..300).contains(&status) {
            let message = reply.json.as_ref().and_then(|b| {
                b.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            return Err(http_error(&reply, message, &self.provider));
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
        let n = |p: &str| body.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        let cached = n("/usage/cache_read_input_tokens");
        let usage = Usage {
            // Anthropic counts cached and cache-written tokens apart from input_tokens.
            prompt_tokens: n("/usage/input_tokens")
                + cached
                + n("/usage/cache_creation_input_tokens"),
            completion_tokens: n("/usage/output_tokens"),
            cached_tokens: cached,
            reasoning_tokens: 0,
            reported_cost: None,
        };
        match body.get("stop_reason").and_then(Value::as_str) {
            Some("refusal") => {
                return Err(failure(
                    &self.provider,
                    AttemptClass::ContentPolicy,
                    Some(status),
                    "the model refused (stop_reason=refusal)",
                    usage,
                ));
            }
            Some("max_tokens") => {
                return Err(failure(
                    &self.provider,
                    AttemptClass::ProviderBadOutput,
                    Some(status),
                    "output truncated at max_tokens",
                    usage,
                ));
            }
            _ => {}
        }
        let blocks = body
            .get("content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let content = blocks
            .iter()
            .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .and_then(|b| b.get("input"))
            .map(Value::to_string)
            .or_else(|| {
                let text: Vec<&str> = blocks
                    .iter()
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect();
                (!text.is_empty()).then(|| text.join(""))
            });
        match content {
            Some(content) => Ok(Completion {
                logprobs: None,
                content,
                usage,
                status,
            }),
            None => Err(failure(
                &self.provider,
                AttemptClass::ProviderBadOutput,
                Some(status),
                "HTTP 200 with no content",
                usage,
            )),
        }
    }
}

impl ProviderApi for Anthropic {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        Box::pin(self.send(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Message;
    use std::time::Duration;

    #[test]
    fn system_prompt_is_top_level_and_the_schema_is_a_forced_tool() {
        let messages = [
            Message {
                role: Role::System,
                content: "be brief".into(),
            },
            Message {
                role: Role::User,
                content: "hi".into(),
            },
        ];
        let schema = RawValue::from_string(r#"{"type": "object"}"#.into()).unwrap();
        let r = ChatRequest {
            model: "claude",
            messages: &messages,
            json_schema: Some(("triage_output", &schema)),
            native_schema: true,
            max_tokens: None,
            temperature: Some(0.0),
            timeout: Duration::from_secs(1),
            key: None,
            metadata: None,
            logprobs: false,
            extra: None,
        };
        let b: Value =
            serde_json::from_slice(&serde_json::to_vec(&Anthropic::body(&r)).unwrap()).unwrap();
        assert_eq!(b["system"], "be brief");
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
        assert_eq!(b["messages"][0]["role"], "user");
        assert_eq!(b["max_tokens"], 1024);
        assert_eq!(b["tools"][0]["name"], "triage_output");
        assert_eq!(b["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(b["tool_choice"]["type"], "tool");
        assert_eq!(b["tool_choice"]["name"], "triage_output");
    }
}
