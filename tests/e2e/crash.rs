//! Crash safety: a real `concord` process under a steady write load is
//! killed with SIGKILL at pseudo-random points, round after round, and
//! restarted. Checked after every kill, against the load generator's own
//! record of acknowledged commits (not against the database):
//! every acknowledged commit is present; no commit is half-applied; the
//! projection equals a replay; the audit chain verifies; no sequence gaps.
//!
//! `CONCORD_CRASH_ROUNDS` sets the number of rounds (default 3; `just
//! crash-test` runs more). The seed is printed, and `CONCORD_CRASH_SEED`
//! replays a run.

use crate::common::{FAST_LIMITS, config_text, wasm};
use concord::audit::{AuditFilter, Verification, calls};
use concord::kb::Store;
use concord::kb::redb::RedbStore;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};

/// Commits per round's script: more than a round ever gets through.
const LOAD: usize = 400;

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn sigkill_under_load_loses_nothing_acknowledged() {
    let rounds = env_u64("CONCORD_CRASH_ROUNDS").unwrap_or(3);
    let seed = env_u64("CONCORD_CRASH_SEED").unwrap_or_else(|| concord::kb::now_ms() | 1);
    println!("crash test: {rounds} rounds, seed {seed} (CONCORD_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("agents")).expect("agents");
    std::fs::copy(wasm("probe"), dir.path().join("agents/sales.wasm")).expect("copy");
    std::fs::write(dir.path().join("concord.toml"), config_text(FAST_LIMITS)).expect("config");
    let mut acked: Vec<String> = Vec::new();
    let mut recovered = 0;

    for round in 0..rounds {
        // Each line commits two entities atomically; a half-applied commit
        // would leave one without the other.
        let mut script = String::new();
        for i in 0..LOAD {
            let ops = serde_json::json!({"ops": [{"op": "commit", "reason": "load", "writes": [
                {"entity": format!("customer/r{round}-{i}-a"), "expect": "absent", "set": {"status": "active", "name": format!("{i}")}},
                {"entity": format!("customer/r{round}-{i}-b"), "expect": "absent", "set": {"status": "active", "name": format!("{i}")}},
            ]}]});
            script.push_str(&serde_json::json!({"agent": "sales", "kind": "load", "body": ops}).to_string());
            script.push('\n');
        }
        std::fs::write(dir.path().join("load.jsonl"), script).expect("script");

        let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .current_dir(dir.path())
            .args(["run", "--script", "load.jsonl"])
            .env("CONCORD_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("concord starts");
        // Kill after a pseudo-random number of acknowledgements (1..LOAD/2).
        let kill_after = 1 + (rng.next() % (LOAD as u64 / 2)) as usize;
        let stdout = child.stdout.take().expect("stdout");
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // `[line N] sales invocation K ok: [{"versions":[1,1]}]`: the
            // commit is durable before the line is printed.
            if line.contains(" ok: [{\"versions\":[1,1]}]") {
                let n: usize = line
                    .trim_start_matches('[')
                    .trim_start()
                    .trim_start_matches("line")
                    .split(']')
                    .next()
                    .and_then(|s| s.trim().parse().ok())
                    .expect("a script line number");
                acked.push(format!("r{round}-{}", n - 1));
                seen += 1;
                if seen >= kill_after {
                    child.kill().expect("SIGKILL");
                    break;
                }
            }
        }
        let _ = child.wait();
        let _ = std::io::stdout().flush();

        // Restart: the store opens (recovering), and everything holds.
        let store = RedbStore::open(&dir.path().join("data/concord.redb")).expect("reopens after SIGKILL");
        let from_journal = store.recovered_batches();
        recovered += from_journal;
        for id in &acked {
            for side in ["a", "b"] {
                let e = store.get(&format!("customer/{id}-{side}").parse().expect("ref")).expect("read");
                assert!(e.is_some(), "round {round}: acknowledged commit {id} lost its `{side}` entity");
            }
        }
        for i in 0..LOAD {
            let a = store.get(&format!("customer/r{round}-{i}-a").parse().expect("ref")).expect("read").is_some();
            let b = store.get(&format!("customer/r{round}-{i}-b").parse().expect("ref")).expect("read").is_some();
            assert_eq!(a, b, "round {round}: commit {i} is half-applied");
        }
        let replay = store.replay().expect("replay");
        assert!(replay.differences.is_empty(), "round {round}: {:?}", replay.differences);
        let events = store.events(0, usize::MAX).expect("events");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "round {round}: event seqs have gaps");
        match store.verify_audit().expect("verify") {
            Verification::Intact { .. } => {}
            Verification::Broken { seq, problem } => panic!("round {round}: audit broken at {seq}: {problem}"),
        }
        drop(store);
        println!(
            "round {round}: killed after {seen} acknowledged commits; {} acknowledged in all, all present; {} batches recovered from the journal",
            acked.len(),
            from_journal
        );
    }
    // The kills land while batches are written, between checkpoints, so the
    // journal is what keeps those commits (a kill right after a checkpoint
    // recovers none; every round doing so is not a real possibility).
    assert!(recovered > 0, "no round needed the journal: the test did not exercise it");

    // Each restart after a kill is recorded as such.
    let store = RedbStore::open_read_only(&dir.path().join("data/concord.redb")).expect("opens");
    let starts =
        store.audit(&AuditFilter { call: Some(calls::HOST_START.into()), ..Default::default() }).expect("audit");
    assert_eq!(starts.len() as u64, rounds);
    assert!(starts.iter().skip(1).all(|e| e.outcome.contains("without a stop entry")), "{starts:#?}");
}
