//! Shared helpers for the API tests: a real server on `127.0.0.1:0`
//! (in this process, or the `concord serve` binary), and a real HTTP
//! client.

use crate::common::{Env, config_text, wasm};
use bytes::Bytes;
use concord::Server;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// An HTTP client for one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: status, JSON body (or `Null`), headers.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub headers: HeaderMap,
}

impl Api {
    pub fn new(base: &str) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Api {
            base: base.trim_end_matches('/').into(),
            token: None,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn with_token(&self, token: &str) -> Api {
        Api { token: Some(token.into()), ..self.clone() }
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>, headers: &[(&str, &str)]) -> Answer {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .expect("answered within 60 s")
            .expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), text, headers }
    }

    /// A POST that may fail (the server was killed): `None` then.
    pub async fn try_post(&self, path: &str, body: &Value) -> Option<Answer> {
        let mut req = Request::builder().method(Method::POST).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        self.try_send(req).await
    }

    /// A GET that may fail: `None` then.
    pub async fn try_get(&self, path: &str) -> Option<Answer> {
        let req =
            Request::builder().uri(format!("{}{path}", self.base)).body(Full::new(Bytes::new())).expect("request");
        self.try_send(req).await
    }

    async fn try_send(&self, req: Request<Full<Bytes>>) -> Option<Answer> {
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(req)).await.ok()?.ok()?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Some(Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), text, headers })
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.request(Method::POST, path, Some(body.to_string().into_bytes()), &[]).await
    }

    /// Reads a Server-Sent Events stream from `last_id` until `n` items
    /// have come (or `within` passes), then hangs up. Returns (id, data).
    pub async fn sse(&self, path: &str, last_id: Option<u64>, n: usize, within: Duration) -> Vec<(u64, Value)> {
        let mut req = Request::builder().method(Method::GET).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let req = req.body(Full::new(Bytes::new())).expect("request");
        let mut out = Vec::new();
        let read = async {
            let response = self.client.request(req).await.expect("the stream opens");
            assert_eq!(response.status(), StatusCode::OK, "the stream opens");
            let mut body = response.into_body();
            let (mut buf, mut id, mut data) = (Vec::new(), None::<u64>, String::new());
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                let Ok(chunk) = frame.into_data() else { continue };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let line = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
                    if line.is_empty() {
                        if let Some(i) = id.take() {
                            out.push((i, serde_json::from_str(&data).expect("an item is JSON")));
                            if out.len() >= n {
                                return;
                            }
                        }
                        data.clear();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
            }
        };
        let _ = tokio::time::timeout(within, read).await;
        out
    }
}

/// A host and its server, in this process.
pub struct Served {
    pub env: Env,
    pub server: Server,
    pub api: Api,
}

impl Served {
    /// The example config (test limits) with `server` appended under
    /// `[server]`, and these agents.
    pub async fn start(agents: &[(&str, &str)], server: &str) -> Served {
        let config = format!("{}\n[server]\n{server}\n", config_text(crate::common::FAST_LIMITS));
        let env = Env::with_config(agents, &config);
        Self::on(env).await
    }

    pub async fn on(env: Env) -> Served {
        let server = Server::start(env.host.clone(), "127.0.0.1:0".parse().expect("addr")).await.expect("serves");
        let api = Api::new(&format!("http://{}", server.addr()));
        Served { env, server, api }
    }

    /// Shuts the server down and waits for it; the host stays.
    pub async fn stop(self) -> Env {
        self.server.shutdown();
        self.server.wait().await;
        self.env
    }
}

/// A `concord serve` process in `dir` (laid out like the repo), on a free
/// port. Stdout and stderr go to `serve.log` there.
pub struct Process {
    pub child: std::process::Child,
    pub api: Api,
}

impl Process {
    pub fn start(dir: &Path) -> Process {
        Self::start_with_env(dir, &[])
    }

    /// Like [`Process::start`], with these environment variables set.
    pub fn start_with_env(dir: &Path, vars: &[(&str, &str)]) -> Process {
        let log = std::fs::File::create(dir.join("serve.log")).expect("log");
        let server_file = dir.join("data/concord.redb.server");
        let _ = std::fs::remove_file(&server_file);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
            .current_dir(dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("CONCORD_CONFIG")
            .env_remove("RUST_BACKTRACE")
            .env("CONCORD_LOG", "info")
            .envs(vars.iter().copied())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("concord serve starts");
        let started = std::time::Instant::now();
        let address = loop {
            if let Ok(text) = std::fs::read_to_string(&server_file)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && let Some(a) = v["address"].as_str()
            {
                break a.to_string();
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "concord serve did not start: {}",
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Process { child, api: Api::new(&format!("http://{address}")) }
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(mut self) -> Option<i32> {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("concord serve did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temp folder for a `concord serve` process: these agents, the example
/// config (test limits) with `server` under `[server]`.
pub fn service_dir(agents: &[(&str, &str)], server: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("agents")).expect("agents");
    for (name, guest) in agents {
        std::fs::copy(wasm(guest), dir.path().join("agents").join(format!("{name}.wasm"))).expect("copy agent");
    }
    let config = format!("{}\n[server]\n{server}\n", config_text(crate::common::FAST_LIMITS));
    std::fs::write(dir.path().join("concord.toml"), config).expect("config");
    dir
}
