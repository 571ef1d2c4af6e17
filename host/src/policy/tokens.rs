//! How many model tokens each agent has spent today (`[agents.NAME]
//! tokens_per_day`).
//!
//! Counted in memory, per host, by UTC day: a restart starts the count
//! afresh, and several hosts count apart (like the action rate, see
//! [`super::rate`]). What a call spends is known only once the server has
//! answered, so a call is admitted while the day's count is under the
//! budget, and reserves at once what it may spend (its prompt, estimated,
//! and at most what is left for the answer: `max_tokens`); the reservation
//! is settled to what the server says it spent.

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
    #[cfg(test)]
    fn spent(&self, agent: &str, now_ms: u64) -> u64 {
        let spent = self.spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match spent.get(agent) {
            Some((day, n)) if *day == now_ms / DAY_MS => *n,
            _ => 0,
        }
    }

    /// Takes up to `want` of what is left of `budget` today, at once (so
    /// that two calls at the same time cannot both take the rest): what it
    /// took, or `Err(spent)` when nothing is left.
    pub fn reserve(&self, agent: &str, now_ms: u64, want: u64, budget: u64) -> Result<u64, u64> {
        let mut spent = self.spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = Self::today(&mut spent, agent, now_ms);
        if entry.1 >= budget {
            return Err(entry.1);
        }
        let took = want.min(budget - entry.1);
        entry.1 += took;
        Ok(took)
    }

    /// Replaces a reservation made on the day of `reserved_ms` by what the
    /// call spent.
    pub fn settle(&self, agent: &str, reserved_ms: u64, reserved: u64, spent_tokens: u64) {
        let mut spent = self.spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = spent.get_mut(agent).filter(|e| e.0 == reserved_ms / DAY_MS) {
            entry.1 = entry.1.saturating_sub(reserved).saturating_add(spent_tokens);
        }
    }

    fn today<'a>(spent: &'a mut HashMap<String, (u64, u64)>, agent: &str, now_ms: u64) -> &'a mut (u64, u64) {
        let entry = spent.entry(agent.to_string()).or_insert((now_ms / DAY_MS, 0));
        if entry.0 != now_ms / DAY_MS {
            *entry = (now_ms / DAY_MS, 0);
        }
        entry
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
        assert_eq!(t.reserve("support", noon, 300, 1000), Ok(300));
        assert_eq!(t.reserve("support", noon + 1, 200, 1000), Ok(200));
        assert_eq!(t.reserve("sales", noon, 7, 1000), Ok(7));
        assert_eq!(t.spent("support", noon), 500);
        assert_eq!(t.spent("sales", noon), 7);
        assert_eq!(t.spent("support", noon + DAY_MS), 0, "a new day starts from nothing");
        assert_eq!(t.reserve("support", noon + DAY_MS, 1, 1000), Ok(1));
        assert_eq!(t.spent("support", noon + DAY_MS), 1);
        assert_eq!(DailyTokens::until_tomorrow_ms(noon), DAY_MS / 2);
    }

    #[test]
    fn a_reservation_takes_at_most_what_is_left_and_settles_to_what_was_spent() {
        let t = DailyTokens::default();
        let noon = 20_000 * DAY_MS + DAY_MS / 2;
        assert_eq!(t.reserve("a", noon, 70, 100), Ok(70));
        assert_eq!(t.reserve("a", noon, 70, 100), Ok(30), "only what is left");
        assert_eq!(t.reserve("a", noon, 1, 100), Err(100));
        t.settle("a", noon, 70, 20);
        assert_eq!(t.spent("a", noon), 50);
        t.settle("a", noon - DAY_MS, 30, 0);
        assert_eq!(t.spent("a", noon), 50, "a reservation of another day settles nothing today");
    }
}
