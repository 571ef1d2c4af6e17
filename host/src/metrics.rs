//! Counters and histograms the host keeps as it works, for `GET /metrics`
//! (see [`crate::server`], which encodes them in the Prometheus format).
//!
//! They are plain atomics, updated on the paths they measure (one relaxed
//! add per host call), and read only when scraped, so keeping them costs
//! next to nothing when nobody looks.

use crate::audit::{Decision, calls};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of latency buckets, in seconds: 50 µs to 5 s.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Upper bounds of batch-size buckets: jobs per write transaction.
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// A histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, and one past the last (+Inf).
    buckets: Box<[AtomicU64]>,
    /// The sum of what was observed, in millionths.
    sum_micros: AtomicU64,
}

/// What a [`Histogram`] holds when read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations in this bucket alone), the last bound
    /// `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }

    pub fn observe(&self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        // A negative or NaN value counts as 0 in the sum.
        self.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramSnapshot { buckets, sum: self.sum_micros.load(Relaxed) as f64 / 1e6, count }
    }
}

/// The calls counted, in this order: the agent calls, then the invocation
/// bracket and a stopped cascade.
const COUNTED: [&str; 18] = [
    calls::GET,
    calls::COMMIT,
    calls::HISTORY,
    calls::RECENT,
    calls::LOG,
    calls::ACT,
    calls::REQUEST_CHANGE,
    calls::RESOLVE_CHANGE,
    calls::LEASE,
    calls::RENEW,
    calls::RELEASE,
    calls::CHANGES,
    calls::HTTP,
    calls::MODEL,
    calls::MODEL_GRANTED,
    calls::INVOCATION_START,
    calls::INVOCATION_END,
    calls::CASCADE_STOPPED,
];

/// What the gate counts: host calls by call and decision, refusals by
/// agent, and how long commits take.
#[derive(Debug)]
pub struct GateMetrics {
    calls: [[AtomicU64; Decision::ALL.len()]; COUNTED.len()],
    /// Refusals by (agent, decision). Refusals are rare next to calls, and
    /// agent names are not known in advance: a map behind a lock.
    refusals: Mutex<BTreeMap<(String, Decision), u64>>,
    /// From `kb.commit`'s entry into the gate to its answer (durable).
    pub commit_latency: Histogram,
    /// Invocations ended, by (agent, decision of their end).
    invocations: Mutex<BTreeMap<(String, Decision), u64>>,
    /// Outbound HTTP body bytes by agent: (sent, received), for the
    /// requests that got a response.
    http_bytes: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Default for GateMetrics {
    fn default() -> Self {
        Self {
            calls: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            refusals: Mutex::default(),
            commit_latency: Histogram::new(LATENCY_BOUNDS),
            invocations: Mutex::default(),
            http_bytes: Mutex::default(),
        }
    }
}

impl GateMetrics {
    /// Counts one audited call.
    pub fn count(&self, agent: &str, call: &str, decision: Decision) {
        if let (Some(c), Some(d)) =
            (COUNTED.iter().position(|x| *x == call), Decision::ALL.iter().position(|x| *x == decision))
        {
            self.calls[c][d].fetch_add(1, Relaxed);
        }
        if decision.is_refusal() {
            let mut refusals = self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *refusals.entry((agent.to_string(), decision)).or_default() += 1;
        }
    }

    /// Counts an invocation's end.
    pub fn invocation(&self, agent: &str, decision: Decision) {
        let mut map = self.invocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry((agent.to_string(), decision)).or_default() += 1;
    }

    /// Counts the body bytes of one outbound request that got a response.
    pub fn http(&self, agent: &str, sent: usize, received: usize) {
        let mut map = self.http_bytes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = map.entry(agent.to_string()).or_default();
        entry.0 += sent as u64;
        entry.1 += received as u64;
    }

    /// Outbound HTTP body bytes by agent: (agent, sent, received).
    pub fn http_bytes(&self) -> Vec<(String, u64, u64)> {
        let map = self.http_bytes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|(a, (s, r))| (a.clone(), *s, *r)).collect()
    }

    /// Invocations ended, by (agent, decision).
    pub fn invocations(&self) -> Vec<(String, Decision, u64)> {
        let map = self.invocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|((a, d), n)| (a.clone(), *d, *n)).collect()
    }

    /// Host calls by (call, decision), the ones counted at least once.
    pub fn calls(&self) -> Vec<(&'static str, Decision, u64)> {
        let mut out = Vec::new();
        for (c, row) in COUNTED.iter().zip(&self.calls) {
            for (d, n) in Decision::ALL.iter().zip(row) {
                let n = n.load(Relaxed);
                if n > 0 {
                    out.push((*c, *d, n));
                }
            }
        }
        out
    }

    /// Refusals by (agent, decision).
    pub fn refusals(&self) -> Vec<(String, Decision, u64)> {
        let refusals = self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        refusals.iter().map(|((a, d), n)| (a.clone(), *d, *n)).collect()
    }
}

/// What a store reports about its own work (see
/// [`crate::kb::Store::stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// Jobs per write transaction.
    pub batch_size: Option<HistogramSnapshot>,
    /// How long each sync of the write-ahead journal took.
    pub sync_latency: Option<HistogramSnapshot>,
    /// Jobs waiting for the writer.
    pub queued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 3.0, 11.0, 100.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (10.0, 1), (f64::INFINITY, 2)]);
        assert_eq!(s.count, 5);
        assert!((s.sum - 115.5).abs() < 1e-6, "{}", s.sum);
    }

    #[test]
    fn calls_and_refusals_are_counted_by_kind() {
        let m = GateMetrics::default();
        m.count("sales", calls::COMMIT, Decision::Conflict);
        m.count("sales", calls::COMMIT, Decision::Conflict);
        m.count("sales", calls::GET, Decision::Allowed);
        m.count("sales", "no.such.call", Decision::Allowed);
        assert_eq!(m.calls(), vec![(calls::GET, Decision::Allowed, 1), (calls::COMMIT, Decision::Conflict, 2)]);
        assert_eq!(m.refusals(), vec![("sales".to_string(), Decision::Conflict, 2)]);
    }
}
