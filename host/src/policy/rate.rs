//! How many actions each agent may record per minute and per hour
//! (`[actions] per_minute`, `per_hour`).
//!
//! Counted in memory, per host: a restart starts the count afresh, and
//! several hosts count apart. An action takes its place in the window when
//! it is asked for ([`ActionRate::admit`]) and gives it back unless it is
//! kept ([`Admitted::keep`], once the store recorded it): a refusal, a
//! repeated key or a fault costs an agent nothing, and two concurrent
//! calls cannot both take the last place.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// The windows of every agent.
#[derive(Debug)]
pub struct ActionRate {
    /// Changed by a config reload ([`ActionRate::set_limits`]).
    per_minute: AtomicU32,
    per_hour: AtomicU32,
    /// Per agent, when each action in the last hour was admitted (oldest
    /// first; at most `per_hour` of them).
    seen: Mutex<HashMap<String, VecDeque<u64>>>,
}

/// An action's place in its agent's window: given back when dropped,
/// unless kept.
#[derive(Debug)]
#[must_use = "a place not kept is given back at once"]
pub struct Admitted<'a> {
    rate: &'a ActionRate,
    agent: String,
    at_ms: u64,
    kept: bool,
}

impl ActionRate {
    pub fn new(per_minute: u32, per_hour: u32) -> Self {
        Self {
            per_minute: AtomicU32::new(per_minute),
            per_hour: AtomicU32::new(per_hour),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// New bounds, from the next admission on. What is counted stays: a
    /// lower bound than an agent's count holds it until enough places free.
    pub fn set_limits(&self, per_minute: u32, per_hour: u32) {
        self.per_minute.store(per_minute, Ordering::Relaxed);
        self.per_hour.store(per_hour, Ordering::Relaxed);
    }

    /// Takes a place for one action of `agent` at `now_ms`, or says which
    /// limit it is past (its config key) and when a place frees.
    pub fn admit(&self, agent: &str, now_ms: u64) -> Result<Admitted<'_>, (&'static str, String)> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let times = seen.entry(agent.to_string()).or_default();
        while times.front().is_some_and(|t| t.saturating_add(HOUR_MS) <= now_ms) {
            times.pop_front();
        }
        let in_minute = times.iter().rev().take_while(|t| t.saturating_add(MINUTE_MS) > now_ms).count();
        let (per_minute, per_hour) = (self.per_minute.load(Ordering::Relaxed), self.per_hour.load(Ordering::Relaxed));
        let past = if in_minute >= per_minute as usize && in_minute > 0 {
            let oldest = times[times.len() - in_minute];
            Some(("actions.per_minute", per_minute, in_minute, oldest + MINUTE_MS))
        } else if times.len() >= per_hour as usize && !times.is_empty() {
            Some(("actions.per_hour", per_hour, times.len(), times[0] + HOUR_MS))
        } else {
            None
        };
        if let Some((key, limit, count, frees_at)) = past {
            return Err((
                key,
                format!(
                    "{agent} has recorded {count} actions in that window ({key} = {limit}); try again in {} ms",
                    frees_at.saturating_sub(now_ms)
                ),
            ));
        }
        times.push_back(now_ms);
        Ok(Admitted { rate: self, agent: agent.to_string(), at_ms: now_ms, kept: false })
    }
}

impl Admitted<'_> {
    /// Keeps the place: the action was recorded.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut seen = self.rate.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(times) = seen.get_mut(&self.agent)
            && let Some(i) = times.iter().rposition(|t| *t == self.at_ms)
        {
            times.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_bounds_an_agent_alone_and_frees_as_it_slides() {
        let rate = ActionRate::new(2, 3);
        rate.admit("sales", 0).expect("1").keep();
        rate.admit("sales", 1).expect("2").keep();
        let (key, why) = rate.admit("sales", 2).unwrap_err();
        assert_eq!(key, "actions.per_minute");
        assert!(why.contains("try again in 59998 ms"), "{why}");
        rate.admit("support", 2).expect("another agent has its own window").keep();
        rate.admit("sales", 60_000).expect("the first has left the minute").keep();
        let (key, _) = rate.admit("sales", 120_001).unwrap_err();
        assert_eq!(key, "actions.per_hour", "three in the hour");
        rate.admit("sales", HOUR_MS).expect("the first has left the hour").keep();
        // A released place is free again.
        let rate = ActionRate::new(1, 10);
        drop(rate.admit("sales", 0).expect("1"));
        rate.admit("sales", 0).expect("not kept, so free").keep();
        assert!(rate.admit("sales", 0).is_err());
    }
}
