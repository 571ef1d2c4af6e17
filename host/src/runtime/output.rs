//! Agent stdout and stderr, forwarded line by line to the host log with the
//! agent's name in front.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// One stream (stdout or stderr) of one invocation.
///
/// Writes never fail, so a chatty agent is never trapped for printing; past
/// `budget` bytes its output is dropped and one line says so.
#[derive(Debug, Clone)]
pub(crate) struct AgentOutput {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    agent: String,
    stream: &'static str,
    line: Vec<u8>,
    budget: usize,
    dropped: bool,
    /// The last few complete lines, to explain a trap (a Rust panic prints
    /// its message to stderr just before the trap).
    tail: std::collections::VecDeque<String>,
}

/// How many recent lines [`AgentOutput::tail`] keeps.
const TAIL_LINES: usize = 4;

impl AgentOutput {
    pub(crate) fn new(agent: &str, stream: &'static str, budget: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                agent: agent.into(),
                stream,
                line: Vec::new(),
                budget,
                dropped: false,
                tail: Default::default(),
            })),
        }
    }

    /// The last few lines written, joined with ` | `, or `None` if nothing
    /// was.
    pub(crate) fn tail(&self) -> Option<String> {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !inner.line.is_empty() {
            inner.emit();
        }
        let lines: Vec<&str> =
            inner.tail.iter().map(String::as_str).filter(|l| !l.starts_with("note: run with")).collect();
        if lines.is_empty() { None } else { Some(lines.join(" | ")) }
    }
}

impl Inner {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        tracing::info!(target: "concord::agent", "[{}] {}", self.agent, text);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.chars().take(300).collect());
        self.line.clear();
    }

    fn write(&mut self, buf: &[u8]) {
        let take = buf.len().min(self.budget);
        self.budget -= take;
        for &b in &buf[..take] {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
            }
        }
        if take < buf.len() && !self.dropped {
            self.dropped = true;
            if !self.line.is_empty() {
                self.emit();
            }
            tracing::warn!(target: "concord::agent", "[{}] {} output limit reached (limits.output_bytes); the rest is dropped", self.agent, self.stream);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

impl AsyncWrite for AgentOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        // A poisoned lock only means another write panicked mid-line; the
        // buffer is still usable, so keep going.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for AgentOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for AgentOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
