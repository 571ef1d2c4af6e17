//! Scripts: JSON-lines files of triggers, played in order by `concord run
//! --script FILE`.
//!
//! Each line is one JSON object (blank lines and lines starting with `#` are
//! skipped):
//! - a trigger: `{"agent": "sales", "kind": "upsell", "entity":
//!   "customer/acme", "body": {...}}`, with optional `"note"` (printed in the
//!   summary), `"id"` and `"pause_before"` (a host call such as
//!   `"kb.commit"`). A trigger with `pause_before` runs until it is about to
//!   make that call, and waits there while the following lines run;
//! - a resume: `{"resume": "ID"}` lets the paused trigger `ID` go on, and
//!   waits for it to finish.
//!
//! The whole script is parsed and checked before its first line runs.

use crate::audit::calls;
use crate::gate::Breakpoint;
use crate::host::{Host, InvokeError};
use crate::kb::EntityRef;
use crate::policy::schema::Schema;
use crate::runtime::{Invocation, Message};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A script that cannot be run. Names the file and line.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct ScriptError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    agent: String,
    kind: String,
    entity: Option<String>,
    #[serde(default)]
    body: Option<serde_json::Value>,
    id: Option<String>,
    pause_before: Option<String>,
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResume {
    resume: String,
    note: Option<String>,
}

/// One line of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Trigger {
        line: usize,
        agent: String,
        message: Message,
        id: Option<String>,
        pause_before: Option<String>,
        note: Option<String>,
    },
    Resume {
        line: usize,
        id: String,
        note: Option<String>,
    },
}

/// A parsed script.
#[derive(Debug, Clone)]
pub struct Script {
    pub file: PathBuf,
    pub steps: Vec<Step>,
}

impl Script {
    pub fn load(path: &Path) -> Result<Script, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScriptError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read the script: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, file: &Path) -> Result<Script, ScriptError> {
        let mut steps = Vec::new();
        let mut paused = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| ScriptError { file: file.to_path_buf(), line, message };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(trimmed).map_err(|e| err(format!("not a JSON object: {e}")))?;
            if value.get("resume").is_some() {
                let r: RawResume = serde_json::from_value(value).map_err(|e| err(format!("bad resume line: {e}")))?;
                if !paused.remove(&r.resume) {
                    return Err(err(format!("`resume` names `{}`, which is not a paused trigger above", r.resume)));
                }
                steps.push(Step::Resume { line, id: r.resume, note: r.note });
                continue;
            }
            let t: RawTrigger = serde_json::from_value(value).map_err(|e| {
                err(format!("bad trigger: {e} (a trigger needs `agent` and `kind`; `entity`, `body`, `note`, `id`, `pause_before` are optional)"))
            })?;
            let entity = match t.entity {
                Some(s) => Some(s.parse::<EntityRef>().map_err(|e| err(format!("field `entity`: {e}")))?),
                None => None,
            };
            if let Some(call) = &t.pause_before {
                if !calls::AGENT_CALLS.contains(&call.as_str()) {
                    return Err(err(format!(
                        "field `pause_before`: `{call}` is not a host call; use one of {}",
                        calls::AGENT_CALLS.join(", ")
                    )));
                }
                match &t.id {
                    Some(id) => {
                        paused.insert(id.clone());
                    }
                    None => {
                        return Err(err(
                            "field `pause_before` needs an `id`, so that a later line can resume it".into()
                        ));
                    }
                }
            }
            if let Some(id) = &t.id
                && !ids.insert(id.clone())
            {
                return Err(err(format!("field `id`: `{id}` is used twice")));
            }
            let body = t.body.unwrap_or_else(|| serde_json::json!({}));
            steps.push(Step::Trigger {
                line,
                agent: t.agent,
                message: Message { kind: t.kind, entity, body: body.to_string() },
                id: t.id,
                pause_before: t.pause_before,
                note: t.note,
            });
        }
        Ok(Script { file: file.to_path_buf(), steps })
    }

    /// Checks the script against the config and the agent names: every
    /// agent exists and every entity kind is declared. Needs no host, so a
    /// bad line stops the run before anything is opened or written.
    pub fn check(&self, schema: &Schema, agents: &[String]) -> Result<(), ScriptError> {
        for step in &self.steps {
            if let Step::Trigger { line, agent, message, .. } = step {
                let err = |message: String| ScriptError { file: self.file.clone(), line: *line, message };
                if !agents.contains(agent) {
                    return Err(err(format!(
                        "field `agent`: no agent `{agent}` is loaded (loaded: {})",
                        agents.join(", ")
                    )));
                }
                if let Some(e) = &message.entity {
                    schema.check_ref(e).map_err(|m| err(format!("field `entity`: {m}")))?;
                }
            }
        }
        Ok(())
    }
}

/// What one script line did, reported as it happens.
#[derive(Debug, Clone)]
pub enum StepReport {
    /// A trigger is paused before a host call.
    Paused { line: usize, note: Option<String>, id: String, agent: String, call: String },
    /// An invocation finished (for a resumed one, `line` is the resume line).
    Finished { line: usize, note: Option<String>, invocation: Invocation },
}

/// Plays a script. `report` sees each step as it happens. Paused triggers
/// still waiting at the end are released and awaited.
pub async fn run(
    host: Arc<Host>,
    script: &Script,
    mut report: impl FnMut(&StepReport),
) -> Result<Vec<Invocation>, InvokeError> {
    type Paused = (Breakpoint, tokio::task::JoinHandle<Result<Invocation, InvokeError>>);
    let mut paused: BTreeMap<String, Paused> = BTreeMap::new();
    let mut done = Vec::new();
    for step in &script.steps {
        match step {
            Step::Trigger { line, agent, message, id, pause_before: None, note } => {
                let _ = id;
                let invs = host.dispatch(agent, message.clone()).await?;
                report_all(&mut report, *line, note.clone(), &invs);
                done.extend(invs);
            }
            Step::Trigger { line, agent, message, id, pause_before: Some(call), note } => {
                let id = id.clone().unwrap_or_default();
                let bp = Breakpoint::before(call, 1);
                let task = {
                    let (host, agent, message, bp) = (host.clone(), agent.clone(), message.clone(), bp.clone());
                    tokio::spawn(async move { host.invoke_with(&agent, message, bp).await })
                };
                let mut task = task;
                // Either it reaches the breakpoint, or it ends without making
                // that call; both are reported as they are.
                tokio::select! {
                    () = bp.reached() => {
                        report(&StepReport::Paused { line: *line, note: note.clone(), id: id.clone(), agent: agent.clone(), call: call.clone() });
                        paused.insert(id, (bp, task));
                    }
                    finished = &mut task => {
                        let inv = finished.map_err(|e| InvokeError::BadMessage(format!("invocation task failed: {e}")))??;
                        let invs = host.finish(inv).await?;
                        report_all(&mut report, *line, note.clone(), &invs);
                        done.extend(invs);
                    }
                }
            }
            Step::Resume { line, id, note } => {
                if let Some((bp, task)) = paused.remove(id) {
                    bp.release();
                    let inv =
                        task.await.map_err(|e| InvokeError::BadMessage(format!("invocation task failed: {e}")))??;
                    report(&StepReport::Finished { line: *line, note: note.clone(), invocation: inv.clone() });
                    done.push(inv);
                }
            }
        }
    }
    for (_, (bp, task)) in paused {
        bp.release();
        let inv = task.await.map_err(|e| InvokeError::BadMessage(format!("invocation task failed: {e}")))??;
        let invs = host.finish(inv).await?;
        report_all(&mut report, 0, None, &invs);
        done.extend(invs);
    }
    Ok(done)
}

/// Reports an invocation and the ones it caused (the note goes with the first).
fn report_all(report: &mut impl FnMut(&StepReport), line: usize, note: Option<String>, invs: &[Invocation]) {
    for (i, inv) in invs.iter().enumerate() {
        let note = if i == 0 { note.clone() } else { None };
        report(&StepReport::Finished { line, note, invocation: inv.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Script, ScriptError> {
        Script::parse(text, Path::new("s.jsonl"))
    }

    #[test]
    fn triggers_resumes_and_comments_parse() {
        let s = parse(
            "# a comment\n\n{\"agent\":\"sales\",\"kind\":\"upsell\",\"entity\":\"customer/acme\",\"id\":\"u\",\"pause_before\":\"kb.commit\"}\n{\"resume\":\"u\"}\n",
        )
        .expect("valid");
        assert_eq!(s.steps.len(), 2);
        assert!(matches!(&s.steps[0], Step::Trigger { line: 3, pause_before: Some(c), .. } if c == "kb.commit"));
        assert!(matches!(&s.steps[1], Step::Resume { line: 4, .. }));
    }

    #[test]
    fn bad_lines_name_the_line_and_field() {
        for (text, line, needle) in [
            ("{\"agent\":\"a\"}\n", 1, "missing field `kind`"),
            ("\n{\"agent\":\"a\",\"kind\":\"k\",\"entity\":\"acme\"}\n", 2, "field `entity`"),
            ("{\"agent\":\"a\",\"kind\":\"k\",\"agnet\":1}\n", 1, "unknown field `agnet`"),
            ("{not json\n", 1, "not a JSON object"),
            ("{\"resume\":\"x\"}\n", 1, "not a paused trigger"),
            ("{\"agent\":\"a\",\"kind\":\"k\",\"pause_before\":\"kb.commit\"}\n", 1, "needs an `id`"),
            ("{\"agent\":\"a\",\"kind\":\"k\",\"id\":\"x\",\"pause_before\":\"kb.delete\"}\n", 1, "not a host call"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().contains(needle), "`{e}` should mention {needle}");
            assert!(e.to_string().starts_with(&format!("s.jsonl:{line}:")), "{e}");
        }
    }
}

/// Property test: the script parser never panics, and errors point at a
/// line of the input.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_script_parser_never_panics(lines in proptest::collection::vec(prop_oneof![
            ".{0,40}",
            Just("{\"agent\":\"sales\",\"kind\":\"k\"}".to_string()),
            Just("{\"resume\":\"x\"}".to_string()),
            Just("{\"agent\":\"a\",\"kind\":\"k\",\"id\":\"x\",\"pause_before\":\"kb.commit\"}".to_string()),
            Just("{\"agent\":\"a\",\"kind\":\"k\",\"entity\":\"c/\"}".to_string()),
        ], 0..8)) {
            let text = lines.join("\n");
            if let Err(e) = Script::parse(&text, Path::new("s.jsonl")) {
                prop_assert!(e.line >= 1 && e.line <= lines.len(), "line {} of {}", e.line, lines.len());
            }
        }
    }
}
