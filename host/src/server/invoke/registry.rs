//! The triggers this server started, by invocation id, and the requests in
//! flight by idempotency key: what `GET /v1/invocations/{id}` and a
//! duplicate request wait on.

use super::*;

/// How far a trigger has got, as the registry holds it.
#[derive(Debug, Clone)]
pub(super) enum Progress {
    Running,
    Paused { call: String },
    Done(Box<InvocationAnswer>),
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) agent: String,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) breakpoint: Option<Breakpoint>,
}

/// The triggers this server started, by invocation id: the running and
/// paused ones, and the last [`KEEP_DONE`] done ones. Older ones are
/// answered from the audit.
#[derive(Debug, Default)]
pub struct Registry {
    pub(super) inner: Mutex<RegistryInner>,
    /// Requests in flight by idempotency key (see the module docs).
    pub(super) keys: Mutex<HashMap<String, KeyInFlight>>,
}

#[derive(Debug, Default)]
pub(super) struct RegistryInner {
    pub(super) by_id: HashMap<u64, Entry>,
    pub(super) done: VecDeque<u64>,
}

/// Done triggers remembered in memory.
pub(super) const KEEP_DONE: usize = 10_000;

#[derive(Debug, Clone)]
pub(super) struct KeyInFlight {
    pub(super) fingerprint: String,
    /// The invocation id once started, then the answer.
    pub(super) state: watch::Receiver<KeyState>,
}

#[derive(Debug, Clone)]
pub(super) enum KeyState {
    Waiting,
    Started(u64),
    Answered(Result<Box<InvocationAnswer>, KeyRefusal>),
}

/// What a duplicate of a request that was refused gets: the same refusal.
#[derive(Debug, Clone)]
pub(super) struct KeyRefusal {
    pub(super) status: StatusCode,
    pub(super) error: String,
    pub(super) detail: String,
    pub(super) retry_after: Option<u64>,
}

impl From<&ApiError> for KeyRefusal {
    fn from(e: &ApiError) -> Self {
        KeyRefusal {
            status: e.status,
            error: e.body.error.clone(),
            detail: e.body.detail.clone(),
            retry_after: e.retry_after,
        }
    }
}

impl From<KeyRefusal> for ApiError {
    fn from(k: KeyRefusal) -> Self {
        let mut e = ApiError::new(k.status, &k.error, k.detail);
        e.retry_after = k.retry_after;
        e
    }
}

impl Registry {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyInFlight>> {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn start(&self, id: u64, agent: &str, breakpoint: Option<Breakpoint>) {
        let entry = Entry { agent: agent.into(), progress: watch::Sender::new(Progress::Running), breakpoint };
        self.lock().by_id.insert(id, entry);
    }

    pub(super) fn set(&self, id: u64, progress: Progress) {
        let mut inner = self.lock();
        let done = matches!(progress, Progress::Done(_));
        if let Some(e) = inner.by_id.get(&id) {
            e.progress.send_replace(progress);
        }
        if done {
            inner.done.push_back(id);
            while inner.done.len() > KEEP_DONE {
                if let Some(old) = inner.done.pop_front() {
                    inner.by_id.remove(&old);
                }
            }
        }
    }

    pub(super) fn watch(&self, id: u64) -> Option<(String, watch::Receiver<Progress>, Option<Breakpoint>)> {
        let inner = self.lock();
        inner.by_id.get(&id).map(|e| (e.agent.clone(), e.progress.subscribe(), e.breakpoint.clone()))
    }

    /// Releases every paused trigger (a shutdown: they run on, or are
    /// stopped at the end of the drain).
    pub fn release_all(&self) {
        for e in self.lock().by_id.values() {
            if let Some(bp) = &e.breakpoint {
                bp.release();
            }
        }
    }
}
