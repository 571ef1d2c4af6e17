//! How many model tokens each agent has spent today (`[agents.NAME]
//! tokens_per_day`).
//!
//! Counted in memory, per host, by UTC day: a restart starts the count
//! afresh, and several hosts count apart (like the action rate, see
//! [`super::rate`]). What a call spends is known only once the server has
//! answered, so a call is admitted while the day's count is under the
//! budget, and asks for at most what is left (`max_tokens`); its tokens are
//! added when it answers.

use std::collections::HashMap;
use std::sync::Mutex;

const DAY_MS: u64 = 86_400_000;

/// Tokens spent, by agent, on the current UTC day.
#[derive(Debug, Default)]
pub struct DailyTokens {
    /// Per agent: (the day, as days since the epoch; tokens spent on it).
    spent: Mutex<HashMap<String, (u64, u64)>>,
}

impl DailyTokens {
    /// Tokens `agent` has spent on the day of `now_ms`.
    pub fn spent(&self, agent: &str, now_ms: u64) -> u64 {
        let spent = self.spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match spent.get(agent) {
            Some((day, n)) if *day == now_ms / DAY_MS => *n,
            _ => 0,
        }
    }

    /// Adds `tokens` to `agent`'s count for the day of `now_ms` (a new day
    /// starts from nothing).
    pub fn add(&self, agent: &str, now_ms: u64, tokens: u64) {
        let mut spent = self.spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = spent.entry(agent.to_string()).or_insert((now_ms / DAY_MS, 0));
        if entry.0 != now_ms / DAY_MS {
            *entry = (now_ms / DAY_MS, 0);
        }
        entry.1 = entry.1.saturating_add(tokens);
    }

    /// Milliseconds from `now_ms` to the next UTC midnight, when the day's
    /// budget is whole again.
    pub fn until_tomorrow_ms(now_ms: u64) -> u64 {
        DAY_MS - now_ms % DAY_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_counts_apart_from_the_next_and_agents_apart_from_each_other() {
        let t = DailyTokens::default();
        let noon = 20_000 * DAY_MS + DAY_MS / 2;
        t.add("support", noon, 300);
        t.add("support", noon + 1, 200);
        t.add("sales", noon, 7);
        assert_eq!(t.spent("support", noon), 500);
        assert_eq!(t.spent("sales", noon), 7);
        assert_eq!(t.spent("support", noon + DAY_MS), 0, "a new day starts from nothing");
        t.add("support", noon + DAY_MS, 1);
        assert_eq!(t.spent("support", noon + DAY_MS), 1);
        assert_eq!(DailyTokens::until_tomorrow_ms(noon), DAY_MS / 2);
    }
}
