//! `model.complete`: a chat completion from a model of `[models]`, which
//! the host asks on the agent's behalf (an OpenAI-compatible
//! `POST …/chat/completions`: Ollama, llama.cpp's server, vLLM and the
//! hosted APIs all speak it).
//!
//! In order: `limits.max_host_calls` and a breakpoint; the model declared
//! (`models`); granted to the agent (`agents.NAME.models`); the prompt
//! within `limits.max_call_bytes`; the agent's budgets
//! (`agents.NAME.tokens_per_invocation`, then `tokens_per_day`), with
//! `max_tokens` lowered to what is left of both. Then the request, with the
//! model's secret, within the model's `timeout_ms` and
//! `limits.max_http_response_bytes`. The audit entry holds the prompt's
//! sha256 (not the prompt: it may be long, and it is the agent's to log)
//! and the answer, bounded like every entry, with the tokens spent.

use super::{Caller, Gate, HostFault};
use crate::audit::{Decision, calls};
use crate::policy::tokens::DailyTokens;
use bytes::Bytes;
use serde_json::{Value as Json, json};
use std::sync::atomic::Ordering;
use wasmtime_wasi_http::Error as HttpError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What an agent asks of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    /// A model of `[models]`; `None` is `default`.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub content: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: String,
}

/// Why a model call has no answer. Mirrors the WIT `model-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("refused: {0}")]
    Refused(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid answer: {0}")]
    Invalid(String),
}

/// The model a request names when it names none.
pub const DEFAULT_MODEL: &str = "default";

/// How much of a server's answer an error quotes.
const QUOTE_BYTES: usize = 300;

impl Gate {
    pub async fn model_complete(
        &self,
        caller: &Caller,
        request: ModelRequest,
    ) -> Result<Result<Completion, ModelError>, HostFault> {
        let started = self.enter(caller, calls::MODEL).await?;
        let settings = self.settings.load_full();
        let config = &settings.config;
        let name = request.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let messages: Vec<Json> =
            request.messages.iter().map(|m| json!({ "role": m.role, "content": m.content })).collect();
        let prompt = Json::Array(messages.clone()).to_string();
        let prompt_sha256 = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(prompt.as_bytes()))
        };
        let draft = self.draft(
            caller,
            calls::MODEL,
            vec![],
            json!({
                "model": name, "prompt_sha256": prompt_sha256, "messages": messages.len(),
                "prompt_bytes": prompt.len(), "max_tokens": request.max_tokens, "temperature": request.temperature,
            }),
        );
        type Answer = Result<Result<Completion, ModelError>, HostFault>;
        let refuse = |mut draft: crate::audit::AuditDraft, decision: Decision, rule: String, why: String| -> Answer {
            draft.decision = decision;
            draft.rule = Some(rule);
            draft.outcome = format!("refused: {why}");
            self.record(draft, started)?;
            Ok(Err(ModelError::Refused(why)))
        };

        let Some(model) = config.models.get(&name) else {
            let known: Vec<&str> = config.models.keys().map(String::as_str).collect();
            let why = match known.is_empty() {
                true => format!("no model `{name}` is configured: concord.toml has no [models] (add [models.{name}])"),
                false => format!("no model `{name}` is configured (configured: {})", known.join(", ")),
            };
            return refuse(draft, Decision::Invalid, "models".into(), why);
        };
        let grant = config.grants.get(&caller.agent).cloned().unwrap_or_default();
        if !grant.models.contains(&name) {
            let rule = format!("agents.{}.models", caller.agent);
            let why = format!("model `{name}` is not granted to {} ({rule})", caller.agent);
            return refuse(draft, Decision::Forbidden, rule, why);
        }
        if prompt.len() > config.limits.max_call_bytes {
            let why = format!(
                "the prompt is {} bytes; the limit is {} (limits.max_call_bytes)",
                prompt.len(),
                config.limits.max_call_bytes
            );
            return refuse(draft, Decision::Invalid, "limits.max_call_bytes".into(), why);
        }
        // The budgets: what the prompt will cost (estimated, four bytes a
        // token) plus the most the answer may, reserved at once against
        // both; settled to what the server says it spent.
        let prompt_tokens = u64::try_from(prompt.len().div_ceil(4)).unwrap_or(u64::MAX);
        let spent = caller.model_tokens.load(Ordering::Relaxed);
        let invocation_rule = format!("agents.{}.tokens_per_invocation", caller.agent);
        let day_rule = format!("agents.{}.tokens_per_day", caller.agent);
        if spent >= grant.tokens_per_invocation {
            let why = format!(
                "this invocation spent {spent} tokens; its budget is {} ({invocation_rule})",
                grant.tokens_per_invocation
            );
            return refuse(draft, Decision::Invalid, invocation_rule, why);
        }
        let invocation_left = grant.tokens_per_invocation - spent;
        let asked = u64::from(request.max_tokens.unwrap_or(u32::MAX));
        let want = prompt_tokens.saturating_add(asked).min(invocation_left);
        let now = crate::kb::now_ms();
        let reserved = match self.tokens.reserve(&caller.agent, now, want, grant.tokens_per_day) {
            Ok(took) => took,
            Err(today) => {
                let why = format!(
                    "{} spent {today} tokens today; its budget is {} ({day_rule}); whole again in {} min (UTC midnight)",
                    caller.agent,
                    grant.tokens_per_day,
                    DailyTokens::until_tomorrow_ms(now).div_ceil(60_000)
                );
                return refuse(draft, Decision::Deferred, day_rule, why);
            }
        };
        if reserved <= prompt_tokens {
            self.tokens.settle(&caller.agent, now, reserved, 0);
            let (decision, rule) = match reserved < want {
                true => (Decision::Deferred, day_rule),
                false => (Decision::Invalid, invocation_rule),
            };
            let why = format!(
                "the prompt alone (about {prompt_tokens} tokens) is more than the {reserved} left of the budget ({rule})"
            );
            return refuse(draft, decision, rule, why);
        }
        caller.model_tokens.fetch_add(reserved, Ordering::Relaxed);
        let max_tokens = reserved - prompt_tokens;
        // Until it is settled, the reservation stays spent: a call dropped
        // mid-way (an operator's stop) is charged it, and audited.
        let mut guard = Abandoned { gate: self, draft: Some(draft), started };

        let mut body = json!({ "model": model.model, "messages": messages, "max_tokens": max_tokens, "stream": false });
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        // The endpoint was checked when the config was read; connect to it
        // as checked, like an agent's own request.
        let uri = model.endpoint.uri();
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::HOST, model.endpoint.target.host_header());
        if let Some((header, value)) = model.secret.as_deref().and_then(|s| settings.secrets.header(s)) {
            builder = builder.header(header, value);
        }
        let request = match builder.body(super::http::full(Bytes::from(body.to_string()))) {
            Ok(r) => r,
            Err(e) => {
                self.tokens.settle(&caller.agent, now, reserved, 0);
                caller.model_tokens.fetch_sub(reserved, Ordering::Relaxed);
                let draft = guard.draft.take().unwrap_or_else(|| self.draft(caller, calls::MODEL, vec![], json!({})));
                return refuse(draft, Decision::Invalid, "models".into(), format!("model `{name}`: {e}"));
            }
        };
        let max_in = config.limits.max_http_response_bytes;
        let options = super::http::clamp(None, model.timeout);
        let answer = tokio::time::timeout(model.timeout, super::http::exchange(request, options, max_in)).await;
        let late = || {
            ModelError::Unavailable(format!(
                "model `{name}` did not answer within {} ms (models.{name}.timeout_ms)",
                model.timeout.as_millis()
            ))
        };
        let result = match answer {
            // The whole exchange, or one of its steps (the connection's own
            // timeouts are the same), ran out of time.
            Err(_)
            | Ok(Err(
                HttpError::ConnectionTimeout
                | HttpError::ConnectionReadTimeout
                | HttpError::ConnectionWriteTimeout
                | HttpError::HttpResponseTimeout,
            )) => Err(late()),
            Ok(Err(e)) => Err(ModelError::Unavailable(format!("model `{name}` at {}: {e}", model.endpoint.target))),
            Ok(Ok((parts, bytes, _io))) if !parts.status.is_success() => {
                Err(ModelError::Unavailable(format!("model `{name}` answered {}: {}", parts.status, quote(&bytes))))
            }
            Ok(Ok((_, bytes, _io))) => parse(&bytes, prompt_tokens).map_err(|why| {
                ModelError::Invalid(format!(
                    "model `{name}`'s answer is not a chat completion ({why}): {}",
                    quote(&bytes)
                ))
            }),
        };
        // A failed call is charged its prompt: the server may have read it.
        let charged = match &result {
            Ok(c) => u64::from(c.prompt_tokens) + u64::from(c.completion_tokens),
            Err(_) => prompt_tokens,
        };
        self.tokens.settle(&caller.agent, now, reserved, charged);
        caller.model_tokens.fetch_sub(reserved, Ordering::Relaxed);
        caller.model_tokens.fetch_add(charged, Ordering::Relaxed);
        let mut draft = guard.draft.take().unwrap_or_else(|| self.draft(caller, calls::MODEL, vec![], json!({})));
        match &result {
            Ok(c) => {
                draft.outcome = format!(
                    "{}: {}+{} tokens, {} ms: {}",
                    c.finish_reason,
                    c.prompt_tokens,
                    c.completion_tokens,
                    started.elapsed().as_millis(),
                    c.content
                );
            }
            Err(e) => draft.outcome = format!("failed: {e} (charged {charged} tokens for the prompt)"),
        }
        settings.secrets.scrub(&mut draft.outcome);
        self.record(draft, started)?;
        // What the server said goes back to the agent without the secret
        // the host sent it.
        let scrub = |mut text: String| {
            settings.secrets.scrub(&mut text);
            text
        };
        let result = match result {
            Ok(mut c) => {
                c.content = scrub(c.content);
                Ok(c)
            }
            Err(ModelError::Unavailable(why)) => Err(ModelError::Unavailable(scrub(why))),
            Err(ModelError::Invalid(why)) => Err(ModelError::Invalid(scrub(why))),
            Err(ModelError::Refused(why)) => Err(ModelError::Refused(scrub(why))),
        };
        Ok(result)
    }
}

impl Gate {
    /// The models `caller` may call, audited like every host call.
    pub async fn model_granted(&self, caller: &Caller) -> Result<Vec<String>, HostFault> {
        let started = self.enter(caller, calls::MODEL_GRANTED).await?;
        let config = self.config();
        let granted: Vec<String> = config
            .grants
            .get(&caller.agent)
            .map(|g| g.models.iter().filter(|m| config.models.contains_key(*m)).cloned().collect())
            .unwrap_or_default();
        let mut draft = self.draft(caller, calls::MODEL_GRANTED, vec![], json!({}));
        draft.outcome = match granted.is_empty() {
            true => "none granted".into(),
            false => format!("granted: {}", granted.join(", ")),
        };
        self.record(draft, started)?;
        Ok(granted)
    }
}

/// A model call's audit entry, written as abandoned if the call is dropped
/// before it is answered (the invocation stopped under it).
struct Abandoned<'a> {
    gate: &'a Gate,
    draft: Option<crate::audit::AuditDraft>,
    started: std::time::Instant,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(mut draft) = self.draft.take() {
            draft.outcome =
                "abandoned: the invocation stopped before the model answered (its reservation stays charged)".into();
            if let Err(e) = self.gate.record(draft, self.started) {
                tracing::error!("the audit entry of a model call was not written: {e}");
            }
        }
    }
}

/// The start of a server's answer, for an error.
fn quote(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if crate::audit::cut_to(&mut text, QUOTE_BYTES) {
        text.push('…');
    }
    if text.is_empty() { "(an empty body)".into() } else { text }
}

/// Reads an OpenAI-compatible chat completion. A server that does not say
/// how many tokens it spent is counted by an estimate (four bytes a
/// token), so that a budget cannot be passed by omitting `usage`.
fn parse(bytes: &[u8], prompt_estimate: u64) -> Result<Completion, String> {
    let v: Json = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let choice = v["choices"].get(0).ok_or("no `choices[0]`")?;
    let content = choice["message"]["content"].as_str().ok_or("no `choices[0].message.content` text")?.to_string();
    let estimate = |n: usize| u32::try_from(n.div_ceil(4)).unwrap_or(u32::MAX);
    let tokens =
        |key: &str, fallback: u32| v["usage"][key].as_u64().map_or(fallback, |n| u32::try_from(n).unwrap_or(u32::MAX));
    Ok(Completion {
        prompt_tokens: tokens("prompt_tokens", u32::try_from(prompt_estimate).unwrap_or(u32::MAX)),
        completion_tokens: tokens("completion_tokens", estimate(content.len())),
        model: v["model"].as_str().unwrap_or_default().to_string(),
        finish_reason: choice["finish_reason"].as_str().unwrap_or("unknown").to_string(),
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_completion_is_read_and_anything_else_says_what_is_missing() {
        let ok = br#"{"model":"m1","choices":[{"message":{"role":"assistant","content":"high"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1}}"#;
        let c = parse(ok, 9).expect("a completion");
        assert_eq!((c.content.as_str(), c.model.as_str(), c.prompt_tokens, c.completion_tokens), ("high", "m1", 12, 1));
        assert_eq!(c.finish_reason, "stop");
        assert!(parse(b"<html>bad gateway</html>", 9).expect_err("garbage").starts_with("not JSON"));
        assert_eq!(parse(br#"{"choices":[]}"#, 9).expect_err("empty"), "no `choices[0]`");
        assert!(parse(br#"{"choices":[{"message":{"content":7}}]}"#, 9).is_err());
        let no_usage = parse(br#"{"choices":[{"message":{"content":"12345678"}}]}"#, 9).expect("no usage");
        assert_eq!(no_usage.completion_tokens, 2, "estimated, never free");
        assert_eq!(no_usage.prompt_tokens, 9, "the prompt's own estimate");
    }
}
