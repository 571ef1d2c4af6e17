//! Test-only agent that misbehaves on purpose, one way per message kind.
//! Each must end only its own invocation, with an audited error.
//!
//! - `loop`: spins forever (fuel or the time limit must stop it).
//! - `alloc`: allocates until the memory limit.
//! - `trap`: panics (a wasm trap).
//! - `stack`: recurses until the wasm call stack overflows.
//! - `shadow_stack`: recurses with big frames until the shadow stack (in
//!   linear memory) overflows.
//! - `open_file` `{path}`: tries to read a host file; reports what it got.
//! - `env` `{name}`: tries to read an environment variable; reports it.
//! - `commit_then_trap` `{entity}`: reads and commits, then panics.
//! - `huge_string` `{mib}`: builds a string of that many MiB and logs it.
//! - `big_log` `{bytes}`: logs one line of that many bytes.
//! - `big_commit` `{bytes}`: commits a text field of that many bytes.
//! - `many_fields` `{count}`: commits that many fields in one write.
//! - `deep_json` `{depth}`: commits a JSON value nested that deep.
//! - `invalid_utf8`: passes bytes that are not UTF-8 where a string goes.
//! - `socket`: tries to open a TCP connection.
//! - `flood` `{calls}`: makes that many host calls.
//! - `loud_report` `{mib}`: reports that many MiB, starting with a terminal
//!   escape (clear the screen) and a right-to-left override.

use concord_agent::{Handler, Message, Value, Write, kb};
use std::hint::black_box;

struct Hostile;

/// Recursion that lives on the wasm call stack (no shadow-stack frames).
fn recurse(n: u64) -> u64 {
    if black_box(n) == u64::MAX { 0 } else { black_box(recurse(black_box(n + 1))).wrapping_add(1) }
}

/// Recursion with big frames, which live on the shadow stack in linear memory.
fn recurse_shadow(n: u64) -> u64 {
    let buf = black_box([n; 64]);
    if black_box(true) { recurse_shadow(n + 1) + buf[3] } else { 0 }
}

impl Handler for Hostile {
    fn handle(message: Message) -> Result<String, String> {
        let body = message.body_json();
        match message.kind.as_str() {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "trap" => panic!("hostile agent panics on purpose"),
            "stack" => Ok(format!("{}", recurse(0))),
            "shadow_stack" => Ok(format!("{}", recurse_shadow(0))),
            "open_file" => {
                let path = body["path"].as_str().unwrap_or("/etc/passwd");
                match std::fs::read(path) {
                    Ok(bytes) => Ok(format!("read {} bytes from {path}", bytes.len())),
                    Err(e) => Err(format!("could not open {path}: {e}")),
                }
            }
            "env" => {
                let name = body["name"].as_str().unwrap_or("HOME");
                let all = std::env::vars().count();
                match std::env::var(name) {
                    Ok(v) => Ok(format!("read {name}={v} ({all} variables visible)")),
                    Err(e) => Err(format!("could not read {name}: {e} ({all} variables visible)")),
                }
            }
            "commit_then_trap" => {
                let e = message.entity.clone().ok_or("needs an entity")?;
                let current = kb::get(&e)?.ok_or("entity missing")?;
                let w = Write::update(&current).set("last_interaction", Value::Text("hostile was here".into()));
                kb::commit(&[w], "about to trap").map_err(|e| concord_agent::describe(&e))?;
                panic!("trap after a commit");
            }
            "huge_string" => {
                let mib = body["mib"].as_u64().unwrap_or(100) as usize;
                let s = "x".repeat(mib << 20);
                concord_agent::info(&s);
                Ok(format!("logged {mib} MiB"))
            }
            "big_log" => {
                let n = body["bytes"].as_u64().unwrap_or(2 << 20) as usize;
                concord_agent::info(&"y".repeat(n));
                Ok(format!("logged {n} bytes"))
            }
            "big_commit" => {
                let e = message.entity.clone().ok_or("needs an entity")?;
                let current = kb::get(&e)?.ok_or("entity missing")?;
                let n = body["bytes"].as_u64().unwrap_or(2 << 20) as usize;
                let w = Write::update(&current).set("name", Value::Text("z".repeat(n)));
                kb::commit(&[w], "big").map(|v| format!("committed {v:?}")).map_err(|e| concord_agent::describe(&e))
            }
            "many_fields" => {
                let e = message.entity.clone().ok_or("needs an entity")?;
                let current = kb::get(&e)?.ok_or("entity missing")?;
                let n = body["count"].as_u64().unwrap_or(1_000_000);
                let mut w = Write::update(&current);
                for i in 0..n {
                    w = w.set(&format!("f{i}"), Value::Integer(i as i64));
                }
                kb::commit(&[w], "many").map(|v| format!("committed {v:?}")).map_err(|e| concord_agent::describe(&e))
            }
            "deep_json" => {
                let e = message.entity.clone().ok_or("needs an entity")?;
                let current = kb::get(&e)?.ok_or("entity missing")?;
                let depth = body["depth"].as_u64().unwrap_or(100_000) as usize;
                let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                let w = Write::update(&current).set("feature_requests", Value::Json(json));
                kb::commit(&[w], "deep").map(|v| format!("committed {v:?}")).map_err(|e| concord_agent::describe(&e))
            }
            "invalid_utf8" => {
                // The canonical ABI checks strings as they cross into the
                // host; this one is not UTF-8.
                #[expect(unsafe_code, reason = "building an invalid string on purpose, to test the host boundary")]
                let kind = unsafe { String::from_utf8_unchecked(vec![b'c', 0xff, 0xfe, b'x']) };
                let r = kb::get(&concord_agent::entity(&kind, "acme"));
                Ok(format!("the host accepted invalid UTF-8: {r:?}"))
            }
            "socket" => match std::net::TcpStream::connect("127.0.0.1:9") {
                Ok(_) => Ok("connected to 127.0.0.1:9".into()),
                Err(e) => Err(format!("could not connect: {e}")),
            },
            "loud_report" => {
                let mib = body["mib"].as_u64().unwrap_or(40) as usize;
                Ok(format!("\u{1b}[2J\u{202e}all clear{}", "x".repeat(mib << 20)))
            }
            "flood" => {
                let n = body["calls"].as_u64().unwrap_or(1_000_000);
                for i in 0..n {
                    concord_agent::log::log(concord_agent::log::Level::Debug, &format!("call {i}"));
                }
                Ok(format!("made {n} calls"))
            }
            other => Err(format!("hostile does not know `{other}`")),
        }
    }
}

concord_agent::export!(Hostile);
