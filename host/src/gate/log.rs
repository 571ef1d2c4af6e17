//! `kb.log`: a line of the agent's own, audited; an oversized one stops
//! the invocation (it has no error to answer with).

use super::{Caller, Gate, HostFault};
use crate::audit::calls;
use serde_json::json;

impl Gate {
    pub async fn log(&self, caller: &Caller, level: &str, message: &str) -> Result<(), HostFault> {
        let started = self.enter(caller, calls::LOG).await?;
        let mut draft = self.draft(caller, calls::LOG, vec![], json!({ "level": level, "message": message }));
        if let Some(why) = self.oversize(&mut draft) {
            // `log` has no error to return: an oversized line stops the
            // invocation, after its audit entry.
            self.record(draft, started)?;
            return Err(HostFault::Limit(why));
        }
        draft.outcome = "logged".into();
        self.record(draft, started)
    }
}
