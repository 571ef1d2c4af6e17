//! Language models through the host (`model.complete`).
//!
//! `concord.toml` declares the models (`[models.NAME]`, an OpenAI-compatible
//! chat-completions server) and grants them to agents (`[agents.NAME]
//! models`); the agent names a model, never a server or a key. Each call is
//! audited with the prompt's sha256 and the answer, and counted against the
//! agent's token budgets.
//!
//! ```ignore
//! use concord_agent::model;
//!
//! // Without a model (the demo, offline), fall back to a rule.
//! if !model::is_granted("default") { /* the rule */ }
//! match model::ask("Answer with one word: low, medium or high.", "Checkout is down for every user.") {
//!     Ok(severity) => { /* use it */ }
//!     // No model configured or granted, a spent budget, a server down: fall back.
//!     Err(e) => concord_agent::info(&format!("no model: {}", model::describe(&e))),
//! }
//! ```

pub use crate::concord::agent::model::{ChatMessage, Completion, ModelError, Request, complete, granted};

/// What went wrong, in words (the generated `Display` is the debug form).
pub fn describe(e: &ModelError) -> String {
    match e {
        ModelError::Refused(why) => format!("refused by the host: {why}"),
        ModelError::Unavailable(why) => format!("model unavailable: {why}"),
        ModelError::Invalid(why) => format!("invalid answer: {why}"),
    }
}

/// A message with this role and content.
pub fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.into() }
}

/// Whether this agent may call the model `name`.
pub fn is_granted(name: &str) -> bool {
    granted().iter().any(|m| m == name)
}

/// Asks the `default` model, with a system prompt and one user message, at
/// temperature 0; returns the answer's text.
pub fn ask(system: &str, user: &str) -> Result<String, ModelError> {
    let request = Request {
        model: None,
        messages: vec![message("system", system), message("user", user)],
        temperature: Some(0.0),
        max_tokens: None,
    };
    complete(&request).map(|c| c.content)
}
