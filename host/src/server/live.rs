//! The living host: what `concord serve` does while it runs, besides
//! answering requests.
//!
//! - **The agents folder** is watched (inotify, through `notify`, and a
//!   look every [`RESCAN`] in case an event is lost). After a change, once
//!   the folder has been quiet for `[agents] settle_ms`, the host brings
//!   its agents in line with it ([`crate::Host::reload_agents`]): compiled
//!   on the blocking pool, off every request's path.
//! - **The config file** is watched too, and reloaded on a change or on
//!   [`super::Server::reload_config`] (SIGHUP for `concord serve`), through
//!   [`crate::Host::reload_config`].
//! - **Schedules** fire from a [`Clock`] (see [`crate::coord::schedule`]).
//!
//! Each loop ends at `stopped`, after the step under way.

use super::state::App;
use crate::audit::{AuditDraft, calls};
use crate::coord::schedule::{self, Clock, Due, Running, Schedule, ScheduleState, Scheduler};
use crate::host::ConfigReload;
use crate::kb::StoreError;
use crate::policy::config::Config;
use crate::runtime::{Message, Origin};
use notify::Watcher as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// How often the agents folder is looked at without an event.
pub const RESCAN: Duration = Duration::from_secs(10);

/// How long the config file must be quiet after a change before it is read.
const CONFIG_SETTLE: Duration = Duration::from_millis(200);

/// How the living host runs: where its time comes from, and whether it
/// watches its files (`[agents] watch`).
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub clock: Clock,
    pub watch: bool,
}

/// What the loops share with the server.
#[derive(Debug, Default)]
pub struct Signals {
    /// A file in the agents folder changed.
    pub agents: Notify,
    /// The config file changed, or a reload was asked for.
    pub config: Notify,
    /// The schedules changed (a reload), or a run ended.
    pub schedules: Notify,
    /// The schedules' runs under way, by schedule name.
    pub running: Mutex<HashMap<String, Running>>,
}

/// Starts the loops. The watcher is returned too: dropping it stops the
/// events. The schedules' first look is taken before this returns, so a
/// schedule never seen counts from the server's start, whatever the
/// clock does next.
pub(super) async fn spawn(
    app: &Arc<App>,
    options: &LiveOptions,
    stopped: &watch::Receiver<bool>,
) -> (Vec<JoinHandle<()>>, Option<notify::RecommendedWatcher>) {
    let config = app.host.config();
    let watcher = if options.watch { watch_files(app, &config) } else { None };
    let mut tasks = vec![tokio::spawn(config_loop(app.clone(), stopped.clone()))];
    if options.watch {
        tasks.push(tokio::spawn(agents_loop(app.clone(), stopped.clone())));
    }
    let schedules = Schedules::new(options.clock.clone());
    let first = schedules.tick(app).await;
    tasks.push(tokio::spawn(schedules_loop(app.clone(), schedules, first, stopped.clone())));
    (tasks, watcher)
}

/// One watcher for the agents folder and the config file's folder (editors
/// replace a file by renaming over it, which only its folder sees).
fn watch_files(app: &Arc<App>, config: &crate::policy::config::Config) -> Option<notify::RecommendedWatcher> {
    let signals = app.live.clone();
    let agents_dir = std::path::absolute(&config.agents_dir).unwrap_or_else(|_| config.agents_dir.clone());
    let config_file = std::path::absolute(&config.file).unwrap_or_else(|_| config.file.clone());
    let config_name = config_file.file_name().map(std::ffi::OsStr::to_os_string);
    // Some backends report resolved paths (macOS: /private/var for /var):
    // an event under either spelling of the folder counts.
    let real_dir = std::fs::canonicalize(&agents_dir).unwrap_or_else(|_| agents_dir.clone());
    let (dir_a, name_c) = (agents_dir.clone(), config_name.clone());
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        for path in &event.paths {
            if path.parent().is_some_and(|p| p == dir_a || p == real_dir) {
                signals.agents.notify_one();
            }
            if path.file_name().map(std::ffi::OsStr::to_os_string) == name_c {
                signals.config.notify_one();
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch files ({e}); the agents folder is looked at every {} s", RESCAN.as_secs());
            return None;
        }
    };
    if let Err(e) = watcher.watch(&agents_dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {} ({e}); it is looked at every {} s", agents_dir.display(), RESCAN.as_secs());
    }
    if let Some(dir) = config_file.parent()
        && let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive)
    {
        tracing::warn!("cannot watch {} ({e}); reload the config with SIGHUP", config_file.display());
    }
    Some(watcher)
}

/// Waits until `signal` has been quiet for `quiet`; false if stopped.
async fn settle(signal: &Notify, quiet: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            () = signal.notified() => {}
            () = tokio::time::sleep(quiet) => return true,
            _ = stopped.wait_for(|s| *s) => return false,
        }
    }
}

async fn agents_loop(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let mut again = RESCAN;
    loop {
        tokio::select! {
            () = app.live.agents.notified() => {}
            () = tokio::time::sleep(again) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        if !settle(&app.live.agents, app.host.config().agents_settle, &mut stopped).await {
            return;
        }
        let host = app.host.clone();
        again = match tokio::task::spawn_blocking(move || host.reload_agents()).await {
            Ok(Ok(r)) => r.again_after.map_or(RESCAN, |d| d.clamp(Duration::from_millis(10), RESCAN)),
            Ok(Err(e)) => {
                tracing::error!("reloading agents: {e}");
                RESCAN
            }
            Err(e) => {
                tracing::error!("reloading agents: the task failed: {e}");
                RESCAN
            }
        };
    }
}

async fn config_loop(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = app.live.config.notified() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        if !settle(&app.live.config, CONFIG_SETTLE, &mut stopped).await {
            return;
        }
        let host = app.host.clone();
        match tokio::task::spawn_blocking(move || host.reload_config()).await {
            Ok(Ok(ConfigReload::Applied { .. })) => app.live.schedules.notify_one(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("reloading the config: {e}"),
            Err(e) => tracing::error!("reloading the config: the task failed: {e}"),
        }
    }
}

/// A fire decided on: what to run.
struct Fire {
    schedule: Schedule,
    entry: u64,
}

/// The schedules' clock, and what the loop keeps between looks.
#[derive(Clone)]
struct Schedules {
    clock: Clock,
    scheduler: Arc<Scheduler>,
    states: Arc<Mutex<HashMap<String, ScheduleState>>>,
}

impl Schedules {
    fn new(clock: Clock) -> Schedules {
        let scheduler = Arc::new(Scheduler { started_ms: clock.now_ms() });
        Schedules { clock, scheduler, states: Arc::default() }
    }

    /// One look at every schedule, on the blocking pool: starts the fires
    /// due and returns when to look again.
    async fn tick(&self, app: &Arc<App>) -> u64 {
        let now = self.clock.now_ms();
        let (a, s) = (app.clone(), self.clone());
        match tokio::task::spawn_blocking(move || tick(&a, &s.scheduler, &s.states, now)).await {
            Ok((fires, next)) => {
                for fire in fires {
                    // Counted before the spawn, so that a shutdown's drain
                    // cannot slip between the two.
                    app.task_started();
                    tokio::spawn(run(app.clone(), fire, self.states.clone()));
                }
                next
            }
            Err(e) => {
                tracing::error!("schedules: the task failed: {e}");
                now.saturating_add(1000)
            }
        }
    }
}

async fn schedules_loop(app: Arc<App>, schedules: Schedules, mut next: u64, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = schedules.clock.until(next) => {}
            () = app.live.schedules.notified() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        next = schedules.tick(&app).await;
    }
}

/// The outcome saved while a fire's run is under way.
const RUNNING: &str = "running";

/// Decides about every schedule at `now`: audits fires and skips, saves
/// their state, and returns the fires to run and when to look again.
///
/// Each schedule stands alone: a store error on one is logged, that
/// schedule is looked at again a second later, and the others go on. A fire
/// whose audit entry was written is always returned to run, even when its
/// state could not be saved after, so that no fire is audited and dropped.
fn tick(
    app: &App,
    scheduler: &Scheduler,
    states: &Mutex<HashMap<String, ScheduleState>>,
    now: u64,
) -> (Vec<Fire>, u64) {
    let config = app.host.config();
    let mut states = states.lock().unwrap_or_else(PoisonError::into_inner);
    let mut fires = Vec::new();
    let mut next = u64::MAX;
    if app.shutting_down() {
        return (fires, next);
    }
    for s in &config.schedules {
        match tick_one(app, &config, scheduler, &mut states, s, now, &mut fires) {
            Ok(at) => next = next.min(at),
            Err(e) => {
                tracing::error!("schedule {}: {e}; looked at again in a second", s.name);
                next = next.min(now.saturating_add(1000));
            }
        }
    }
    (fires, next)
}

/// One schedule's look at `now`: pushes its fire, if due, onto `fires`, and
/// returns when to look at it again.
fn tick_one(
    app: &App,
    config: &Config,
    scheduler: &Scheduler,
    states: &mut HashMap<String, ScheduleState>,
    s: &Schedule,
    now: u64,
    fires: &mut Vec<Fire>,
) -> Result<u64, StoreError> {
    let store = app.host.store().as_ref();
    let state = match states.get_mut(&s.name) {
        Some(st) => st,
        None => {
            let mut st = schedule::load_state(store, &s.name)?.unwrap_or_default();
            // Read once per process: a run saved as under way did not end
            // here, so the host stopped during it.
            if st.last_outcome.as_deref() == Some(RUNNING) {
                st.last_outcome = Some("did not finish: the host stopped while it ran".into());
                schedule::save_state(store, &s.name, &st)?;
            }
            states.entry(s.name.clone()).or_insert(st)
        }
    };
    if state.rebase(s, now) {
        schedule::save_state(store, &s.name, state)?;
    }
    let running = app.live.running.lock().unwrap_or_else(PoisonError::into_inner).get(&s.name).copied();
    let due = match scheduler.due(s, state, now, running) {
        Due::Fire { due_ms, .. } if !app.host.runtime().has_agent(&s.agent) => {
            Due::Skip { due_ms, fires: 1, why: format!("agent `{}` is not in service (its file was removed)", s.agent) }
        }
        d => d,
    };
    // Hosts sharing a store fire a schedule once between them: the first
    // to claim a due time fires (or skips) it, the others move past it.
    let due_ms = match &due {
        Due::Wait(_) => None,
        Due::Skip { due_ms, .. } | Due::Fire { due_ms, .. } => Some(*due_ms),
    };
    if let Some(due_ms) = due_ms
        && !store.claim_schedule_fire(&s.name, due_ms)?
    {
        tracing::debug!("schedule {}: the fire due at {due_ms} is another host's", s.name);
        state.anchor_ms = due_ms;
        return Ok(s.timing.next_after(due_ms).unwrap_or(u64::MAX));
    }
    match due {
        Due::Wait(at) => Ok(at),
        Due::Skip { due_ms, fires: n, why } => {
            let args = serde_json::json!({ "schedule": s.name, "agent": s.agent, "due_ms": due_ms, "fires": n });
            let mut draft =
                AuditDraft::host(calls::SCHEDULE_SKIPPED, &config.digest, args, format!("{}: skipped: {why}", s.name));
            draft.decision = crate::audit::Decision::Stopped;
            draft.rule = Some(format!("schedule: {}", s.name));
            tracing::info!("schedule {}: skipped: {why}", s.name);
            store.append_audit(draft)?;
            state.anchor_ms = due_ms;
            state.skipped += n;
            schedule::save_state(store, &s.name, state)?;
            Ok(s.timing.next_after(due_ms).unwrap_or(u64::MAX))
        }
        Due::Fire { due_ms, fires: n, missed } => {
            let args = serde_json::json!({
                "schedule": s.name, "agent": s.agent, "kind": s.kind,
                "entity": s.entity.as_ref().map(crate::kb::EntityRef::key), "due_ms": due_ms,
                "fires": n, "missed": missed,
            });
            let outcome = match missed {
                0 if n == 1 => format!("{} fires {}", s.name, s.agent),
                0 => format!("{} fires {} once for {n} fires due meanwhile", s.name, s.agent),
                m => format!(
                    "{} fires {} once for {m} fire(s) missed while the host was down (catch_up = \"once\")",
                    s.name, s.agent
                ),
            };
            let mut draft = AuditDraft::host(calls::SCHEDULE_FIRE, &config.digest, args, outcome);
            draft.rule = Some(format!("schedule: {}", s.name));
            let entry = store.append_audit(draft)?.seq;
            // Audited: from here on the fire runs, whatever the save says.
            app.live
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(s.name.clone(), Running { fire_entry: entry, invocation: None });
            state.anchor_ms = due_ms;
            state.last_fire_ms = Some(now);
            state.last_fire_entry = Some(entry);
            state.last_outcome = Some(RUNNING.into());
            state.fires += 1;
            fires.push(Fire { schedule: s.clone(), entry });
            schedule::save_state(store, &s.name, state)?;
            Ok(s.timing.next_after(due_ms).unwrap_or(u64::MAX))
        }
    }
}

/// Runs one fire's invocation (and what it causes), then records how it
/// ended. Counted as a trigger in flight, so a shutdown's drain waits for it.
/// The caller has counted it with `task_started`.
async fn run(app: Arc<App>, fire: Fire, states: Arc<Mutex<HashMap<String, ScheduleState>>>) {
    let s = &fire.schedule;
    let message = Message { kind: s.kind.clone(), entity: s.entity.clone(), body: s.body.clone() };
    let (live, name) = (app.clone(), s.name.clone());
    let origin = Origin {
        by: Some(format!("schedule:{}", s.name)),
        key: None,
        started: Some(Box::new(move |id| {
            let mut running = live.live.running.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(run) = running.get_mut(&name) {
                run.invocation = Some(id);
            }
        })),
        cause: Some(fire.entry),
    };
    let result = app.host.trigger(&s.agent, message, None, origin).await;
    let (invocation, outcome) = match &result {
        Ok(done) => match done.first() {
            Some(root) => (Some(root.id), root.outcome.to_string()),
            None => (None, "nothing ran".to_string()),
        },
        Err(e) => (None, format!("not run: {e}")),
    };
    if let Err(e) = &result {
        tracing::warn!("schedule {}: {e}", s.name);
    }
    app.live.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&s.name);
    let (a, name) = (app.clone(), s.name.clone());
    let saved = tokio::task::spawn_blocking(move || {
        let mut states = states.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = states.get_mut(&name) else { return Ok(()) };
        // A later fire may have been recorded meanwhile: only this fire's
        // outcome is written here.
        if state.last_fire_entry == Some(fire.entry) {
            state.last_invocation = invocation;
            state.last_outcome = Some(crate::audit::bounded(outcome, 500));
            schedule::save_state(a.host.store().as_ref(), &name, state)?;
        }
        Ok::<(), StoreError>(())
    })
    .await;
    if let Ok(Err(e)) = saved {
        tracing::warn!("schedule {}: could not store the outcome: {e}", s.name);
    }
    app.live.schedules.notify_one();
    app.task_done();
}
