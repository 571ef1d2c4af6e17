//! Schedules: agents that nobody calls, triggered by time (`[[schedules]]`
//! in `concord.toml`).
//!
//! A schedule fires `every` a fixed interval (from the moment it was first
//! seen, then from each fire) or on a `cron` expression in a time zone
//! (UTC unless `timezone` names an IANA zone). Each fire is audited
//! (`schedule.fire`, agent `host`) and starts an invocation whose causation
//! is that entry, so `concord audit --trace` of the invocation shows the
//! schedule that caused it.
//!
//! # What [`Scheduler::due`] decides
//! - A fire that fell due while this host ran fires (several that piled up,
//!   after a clock jump or a stall, fire once).
//! - A fire that fell due before this host started (it was down) follows
//!   the schedule's `catch_up`: `skip` (the default) audits it as skipped
//!   (`schedule.skipped`), `once` fires once for all of them.
//! - A fire whose previous run of the same schedule is still running is
//!   skipped and audited, never piled up.
//!
//! When a schedule last fired, and how that ended, is kept in the store's
//! host state (`schedule.NAME`), so a restart knows what it missed and
//! `concord schedules` can say.
//!
//! Time comes from a [`Clock`]: the system's, or a manual one that a test
//! moves by hand.

use crate::kb::{EntityRef, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Timing {
    Every(Duration),
    Cron { cron: Box<croner::Cron>, text: String, zone: jiff::tz::TimeZone, zone_name: String },
}

/// What a restart does about fires missed while the host was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Audit them as skipped; fire next at the next time that comes.
    Skip,
    /// Fire once, now, for all of them.
    Once,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::Once => "once",
        }
    }
}

/// One `[[schedules]]` entry, checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub agent: String,
    /// The message's kind, entity and (JSON) body.
    pub kind: String,
    pub entity: Option<EntityRef>,
    pub body: String,
    pub timing: Timing,
    pub catch_up: CatchUp,
    /// Where it is declared in the config.
    pub line: usize,
}

impl Schedule {
    /// What the schedule says, for comparing two configs and for listings:
    /// `every 15m`, `cron "0 9 * * MON-FRI" (Europe/Paris)`.
    pub fn describe(&self) -> String {
        match &self.timing {
            Timing::Every(d) => format!("every {}", format_interval(*d)),
            Timing::Cron { text, zone_name, .. } => format!("cron {text:?} ({zone_name})"),
        }
    }

    /// Everything that makes two schedules of one name differ.
    pub fn signature(&self) -> String {
        format!(
            "{} -> {} {} {} {} catch_up={}",
            self.describe(),
            self.agent,
            self.kind,
            self.entity.as_ref().map(EntityRef::key).unwrap_or_default(),
            self.body,
            self.catch_up.as_str()
        )
    }
}

/// The shortest schedule interval: below it a schedule is a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl Timing {
    /// Parses `every = "15m"` or `cron = "0 9 * * MON-FRI"` (exactly one),
    /// with an optional IANA `timezone` for cron. `Err` says what to write.
    pub fn parse(every: Option<&str>, cron: Option<&str>, timezone: Option<&str>) -> Result<Timing, String> {
        match (every, cron) {
            (Some(_), Some(_)) => Err("has both `every` and `cron`: keep one".into()),
            (None, None) => Err("needs `every = \"15m\"` or `cron = \"0 9 * * MON-FRI\"`".into()),
            (Some(every), None) => {
                if timezone.is_some() {
                    return Err("`timezone` applies to `cron` only; an `every` interval has none".into());
                }
                let d = parse_interval(every)?;
                if d < MIN_INTERVAL {
                    return Err(format!("`every = {every:?}` is shorter than the shortest interval, 1s"));
                }
                Ok(Timing::Every(d))
            }
            (None, Some(text)) => {
                let parsed: croner::Cron = text.parse().map_err(|e| {
                    format!("`cron = {text:?}` is not a cron expression: {e} (e.g. \"0 9 * * MON-FRI\")")
                })?;
                let zone_name = timezone.unwrap_or("UTC").to_string();
                let zone = jiff::tz::TimeZone::get(&zone_name).map_err(|e| {
                    format!("`timezone = {zone_name:?}` is not a known IANA zone ({e}), e.g. \"Europe/Paris\"")
                })?;
                let timing = Timing::Cron { cron: Box::new(parsed), text: text.to_string(), zone, zone_name };
                // A pattern that never matches (31 February) is refused now,
                // not found out at the first fire.
                if timing.next_after(0).is_none() {
                    return Err(format!("`cron = {text:?}` never fires"));
                }
                Ok(timing)
            }
        }
    }

    /// The first fire strictly after `after_ms` (ms since the epoch);
    /// `None` if there is none.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Timing::Every(d) => after_ms.checked_add(u64::try_from(d.as_millis()).ok()?),
            Timing::Cron { cron, zone, .. } => {
                let at = jiff::Timestamp::from_millisecond(i64::try_from(after_ms).ok()?).ok()?.to_zoned(zone.clone());
                let next = cron.find_next_occurrence(&at, false).ok()?;
                u64::try_from(next.timestamp().as_millisecond()).ok()
            }
        }
    }
}

impl Timing {
    /// The last fire time at or before `at_ms`, for a cron timing (an
    /// `every` timing is counted from its anchor instead).
    fn last_at_or_before(&self, at_ms: u64) -> Option<u64> {
        match self {
            Timing::Every(_) => None,
            Timing::Cron { cron, zone, .. } => {
                let at = jiff::Timestamp::from_millisecond(i64::try_from(at_ms).ok()?).ok()?.to_zoned(zone.clone());
                let last = cron.find_previous_occurrence(&at, true).ok()?;
                u64::try_from(last.timestamp().as_millisecond()).ok()
            }
        }
    }
}

/// `30s`, `15m`, `1h30m`, `2d`: whole numbers with a unit each.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not an interval: write whole numbers with units s, m, h or d, such as \"15m\" or \"1h30m\""
        )
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(bad)?;
        digits.clear();
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// The shortest text [`parse_interval`] reads back as `d`.
pub fn format_interval(d: Duration) -> String {
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// Where time comes from.
#[derive(Debug, Clone)]
pub enum Clock {
    System,
    /// Moved by hand ([`Clock::set`]): for tests, which must not wait.
    Manual(tokio::sync::watch::Sender<u64>),
}

impl Clock {
    /// A manual clock at `now_ms`.
    pub fn manual(now_ms: u64) -> Clock {
        Clock::Manual(tokio::sync::watch::Sender::new(now_ms))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => crate::kb::now_ms(),
            Clock::Manual(t) => *t.borrow(),
        }
    }

    /// Moves a manual clock to `now_ms` (never back); no effect on the
    /// system clock.
    pub fn set(&self, now_ms: u64) {
        if let Clock::Manual(t) = self {
            t.send_modify(|t| *t = (*t).max(now_ms));
        }
    }

    /// Waits until the clock reads `at_ms` or later. The system clock is
    /// read again at least every minute, so a clock that is set forward
    /// (or a machine that slept) is noticed.
    pub async fn until(&self, at_ms: u64) {
        match self {
            Clock::System => loop {
                let now = crate::kb::now_ms();
                if now >= at_ms {
                    return;
                }
                tokio::time::sleep(Duration::from_millis((at_ms - now).min(60_000))).await;
            },
            Clock::Manual(t) => {
                let mut rx = t.subscribe();
                // The sender lives in `self`: the channel cannot close.
                let _ = rx.wait_for(|now| *now >= at_ms).await;
            }
        }
    }
}

/// What the store keeps of a schedule between runs (host state
/// `schedule.NAME`), and what `concord schedules` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleState {
    /// Fires are counted from here: the last fire, or when the schedule was
    /// first seen.
    pub anchor_ms: u64,
    /// The schedule as it was when the anchor was set ([`Schedule::signature`]):
    /// a changed schedule counts afresh from when it changed.
    #[serde(default)]
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_ms: Option<u64>,
    /// The `schedule.fire` audit entry of the last fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_entry: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_invocation: Option<u64>,
    /// How the last fire's invocation ended (`ok: …`, `failed: …`), or why
    /// it did not run; `running` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    #[serde(default)]
    pub fires: u64,
    #[serde(default)]
    pub skipped: u64,
}

impl ScheduleState {
    /// Counts afresh from `now_ms` if the state is of another version of
    /// the schedule (or of none: never seen). Returns whether it did.
    pub fn rebase(&mut self, schedule: &Schedule, now_ms: u64) -> bool {
        let signature = schedule.signature();
        if self.signature == signature {
            return false;
        }
        self.anchor_ms = now_ms;
        self.signature = signature;
        true
    }
}

fn state_key(name: &str) -> String {
    format!("schedule.{name}")
}

/// Reads a schedule's state; `None` if it never ran here.
pub fn load_state(store: &dyn Store, name: &str) -> Result<Option<ScheduleState>, StoreError> {
    let Some(bytes) = store.host_state(&state_key(name))? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt { what: format!("host state `{}`", state_key(name)), reason: e.to_string() })
}

pub fn save_state(store: &dyn Store, name: &str, state: &ScheduleState) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.put_host_state(state_key(name), bytes)
}

/// A schedule's run under way: its `schedule.fire` audit entry, and its
/// invocation once that has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Running {
    pub fire_entry: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<u64>,
}

impl std::fmt::Display for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.invocation {
            Some(inv) => write!(f, "invocation {inv}"),
            None => write!(f, "the run of fire entry {}, not started yet", self.fire_entry),
        }
    }
}

/// What to do about a schedule now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Not yet: next at this time.
    Wait(u64),
    /// Fire now. `missed`: how many of the fires it stands for fell due
    /// while the host was down (caught up by `catch_up = "once"`).
    Fire { due_ms: u64, fires: u64, missed: u64 },
    /// Do not fire: audit it as skipped, with why.
    Skip { due_ms: u64, fires: u64, why: String },
}

/// The most cron fires counted one by one when working out what was
/// missed; past it the count is a lower bound, and the last fire due is
/// found directly.
const MAX_COUNTED: u64 = 100_000;

/// Decides about schedules: pure, given the time, the state, and whether a
/// run is under way.
#[derive(Debug)]
pub struct Scheduler {
    /// When this host's scheduler started: fires due before it were missed.
    pub started_ms: u64,
}

impl Scheduler {
    /// What `schedule` should do at `now_ms`, given its `state` and the
    /// invocation of its run still under way, if any. The caller sets the
    /// state's anchor to `due_ms` once it acted on a `Fire` or a `Skip`.
    pub fn due(&self, schedule: &Schedule, state: &ScheduleState, now_ms: u64, running: Option<Running>) -> Due {
        let Some(first) = schedule.timing.next_after(state.anchor_ms) else { return Due::Wait(u64::MAX) };
        if first > now_ms {
            return Due::Wait(first);
        }
        // Every fire in (anchor, now]: the latest is the one acted on.
        let (latest, fires, missed) = match &schedule.timing {
            // Counted, not walked: a host down for a year with `every = "1s"`
            // costs nothing here.
            Timing::Every(d) => {
                let step = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
                let fires = (now_ms - state.anchor_ms) / step;
                let latest = state.anchor_ms + fires * step;
                // Fires strictly before the start were missed.
                let missed = match self.started_ms.checked_sub(state.anchor_ms + 1) {
                    Some(before) => (before / step).min(fires),
                    None => 0,
                };
                (latest, fires, missed)
            }
            Timing::Cron { .. } => {
                let (mut latest, mut fires, mut missed) = (first, 1u64, u64::from(first < self.started_ms));
                loop {
                    match schedule.timing.next_after(latest) {
                        Some(next) if next <= now_ms && fires < MAX_COUNTED => {
                            latest = next;
                            fires += 1;
                            missed += u64::from(next < self.started_ms);
                        }
                        // Past the count, the last fire due is still the
                        // one acted on, so that one look covers them all.
                        Some(next) if next <= now_ms => {
                            latest = schedule.timing.last_at_or_before(now_ms).unwrap_or(latest).max(latest);
                            if latest >= self.started_ms {
                                missed = missed.min(fires - 1);
                            } else {
                                missed = fires;
                            }
                            break;
                        }
                        _ => break,
                    }
                }
                (latest, fires, missed)
            }
        };
        if let Some(run) = running {
            return Due::Skip {
                due_ms: latest,
                fires,
                why: format!("the previous run ({run}) is still running; fires do not pile up"),
            };
        }
        if missed == fires && schedule.catch_up == CatchUp::Skip {
            return Due::Skip {
                due_ms: latest,
                fires,
                why: format!(
                    "{fires} fire(s) fell due while the host was down, the last at {latest} ms; catch_up = \"skip\""
                ),
            };
        }
        Due::Fire { due_ms: latest, fires, missed }
    }
}

/// A schedule as `concord schedules` and `GET /v1/schedules` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub name: String,
    pub agent: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// `every 15m`, or `cron "0 9 * * MON-FRI" (UTC)`.
    pub when: String,
    pub catch_up: CatchUp,
    /// The next fire, in ms since the epoch (none: never again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_ms: Option<u64>,
    /// A run under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
    /// What the store keeps: the last fire and its outcome, the counts.
    pub state: ScheduleState,
}

/// Every schedule of `schedules`, with its state in `store` (a schedule
/// never seen counts from `now_ms`), the next fire, and the runs under way.
pub fn views(
    schedules: &[Schedule],
    store: &dyn Store,
    now_ms: u64,
    running: &std::collections::HashMap<String, Running>,
) -> Result<Vec<ScheduleView>, StoreError> {
    let mut out = Vec::new();
    for s in schedules {
        let mut state = load_state(store, &s.name)?.unwrap_or_default();
        state.rebase(s, now_ms);
        out.push(ScheduleView {
            name: s.name.clone(),
            agent: s.agent.clone(),
            kind: s.kind.clone(),
            entity: s.entity.as_ref().map(EntityRef::key),
            when: s.describe(),
            catch_up: s.catch_up,
            next_fire_ms: s.timing.next_after(state.anchor_ms),
            running: running.get(&s.name).copied(),
            state,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(name: &str, interval: &str, catch_up: CatchUp) -> Schedule {
        Schedule {
            name: name.into(),
            agent: "a".into(),
            kind: "tick".into(),
            entity: None,
            body: "{}".into(),
            timing: Timing::parse(Some(interval), None, None).expect("valid"),
            catch_up,
            line: 1,
        }
    }

    #[test]
    fn intervals_parse_and_print_back() {
        assert_eq!(parse_interval("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_interval("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_interval("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "15", "m", "1.5h", "10 minutes", "-1s"] {
            let e = parse_interval(bad).unwrap_err();
            assert!(e.contains("not an interval"), "{bad}: {e}");
        }
        assert_eq!(format_interval(Duration::from_secs(5400)), "1h30m");
        assert!(Timing::parse(Some("0s"), None, None).unwrap_err().contains("shortest"));
    }

    #[test]
    fn cron_fires_in_its_zone_and_bad_ones_are_refused() {
        let t = Timing::parse(None, Some("0 9 * * MON-FRI"), Some("Europe/Paris")).expect("valid");
        // Tuesday 2026-12-01 00:00 UTC: next is 09:00 Paris = 08:00 UTC.
        let tue = 1_796_083_200_000u64;
        assert_eq!(t.next_after(tue), Some(tue + 8 * 3_600_000));
        let e = Timing::parse(None, Some("61 * * * *"), None).unwrap_err();
        assert!(e.contains("not a cron expression"), "{e}");
        let e = Timing::parse(None, Some("0 9 * * *"), Some("Mars/Olympus")).unwrap_err();
        assert!(e.contains("Mars/Olympus"), "{e}");
        assert!(Timing::parse(Some("1m"), Some("* * * * *"), None).unwrap_err().contains("both"));
        assert!(Timing::parse(None, None, None).unwrap_err().contains("needs"));
    }

    #[test]
    fn what_is_due_follows_the_policy() {
        let s = every("s", "10s", CatchUp::Skip);
        let sched = Scheduler { started_ms: 100_500 };
        let state = ScheduleState { anchor_ms: 100_000, ..Default::default() };
        assert_eq!(sched.due(&s, &state, 105_000, None), Due::Wait(110_000));
        assert_eq!(sched.due(&s, &state, 110_000, None), Due::Fire { due_ms: 110_000, fires: 1, missed: 0 });
        // Piled up while running (a stall): one fire for all.
        assert_eq!(sched.due(&s, &state, 135_000, None), Due::Fire { due_ms: 130_000, fires: 3, missed: 0 });
        // Still running: skipped.
        assert!(
            matches!(sched.due(&s, &state, 110_000, Some(Running { fire_entry: 3, invocation: Some(7) })), Due::Skip { due_ms: 110_000, ref why, .. } if why.contains("invocation 7"))
        );

        // Down from 40 s to 100.5 s: 6 fires missed.
        let before = ScheduleState { anchor_ms: 40_000, ..Default::default() };
        assert!(matches!(
            sched.due(&s, &before, 100_500, None),
            Due::Skip { due_ms: 100_000, fires: 6, ref why } if why.contains("down")
        ));
        let once = every("s", "10s", CatchUp::Once);
        assert_eq!(sched.due(&once, &before, 100_500, None), Due::Fire { due_ms: 100_000, fires: 6, missed: 6 });
    }

    /// A long outage is one look: `catch_up = "once"` fires once, and then
    /// nothing is due until the next fire time, however many were missed.
    #[test]
    fn a_long_outage_is_caught_up_once_for_every_and_cron() {
        let day = 86_400_000u64;
        let tue = 1_796_083_200_000u64;
        let once = every("s", "1s", CatchUp::Once);
        let mut cron = every("c", "1s", CatchUp::Once);
        cron.timing = Timing::parse(None, Some("* * * * *"), None).expect("valid");
        // Down 200 days; started again 30.5 s past a minute.
        let started = tue + 200 * day + 30_500;
        let sched = Scheduler { started_ms: started };
        for (s, step) in [(&once, 1_000u64), (&cron, 60_000)] {
            let mut state = ScheduleState { anchor_ms: tue, ..Default::default() };
            let Due::Fire { due_ms, fires, missed } = sched.due(s, &state, started, None) else {
                panic!("{}: one fire for the outage", s.name)
            };
            assert_eq!(due_ms, started - started % step, "{}: the last fire due", s.name);
            assert!(fires >= MAX_COUNTED && missed == fires, "{}: {fires} fires, {missed} missed", s.name);
            state.anchor_ms = due_ms;
            assert_eq!(sched.due(s, &state, started, None), Due::Wait(due_ms + step), "{}: caught up", s.name);
        }
        // With `skip`, the same outage is one skip.
        let skip = every("s", "1s", CatchUp::Skip);
        assert!(
            matches!(sched.due(&skip, &ScheduleState { anchor_ms: tue, ..Default::default() }, started, None), Due::Skip { fires, .. } if fires == 200 * 86_400 + 30)
        );
    }
}
