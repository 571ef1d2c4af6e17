//! The machine: CPU, the disk's fsync rate, and this process's memory.

use anyhow::Context;
use serde_json::{Value as Json, json};
use std::io::Write;
use std::time::{Duration, Instant};

/// The CPU model, core count, kernel, and the fsync rate of the disk the
/// benchmarks write to (a 4 KiB write plus `fdatasync`, for one second):
/// the most durable commits per second anything that syncs each commit
/// can reach.
pub fn run() -> anyhow::Result<Json> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let (p50, per_s) = fsync_rate()?;
    let redb = redb_commit_by_tables()?;
    Ok(json!({
        "cpu": cpu, "cores": cores, "kernel": kernel, "fsync_us_p50": p50, "fsyncs_per_s": per_s,
        "redb_commit_us_by_tables": redb,
    }))
}

/// Median µs per fsync, and fsyncs per second, over about a second.
pub fn fsync_rate() -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir_in(crate::root().join("target")).context("creating a temp folder under target/")?;
    let mut file = std::fs::File::create(dir.path().join("fsync.bin"))?;
    let block = vec![7u8; 4096];
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let per_s = samples.len() as f64 / start.elapsed().as_secs_f64();
    Ok((crate::stats::median(&samples).unwrap_or(0.0), per_s))
}

/// This process's resident memory, in bytes (`VmRSS`).
pub fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS in /proc/self/status")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS has no value")?.parse()?;
    Ok(kib * 1024)
}

/// Today's date and time (UTC), from `date`, for the report.
pub fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// What one durable redb commit costs on this disk, by the number of
/// tables (B-trees) it touches: each is its own copy-on-write path of
/// pages, written apart from the others before the one fsync. A Concord
/// commit touches 8 (events, history, entities, the audit log and its four
/// indexes). Median µs over 200 commits of one 300-byte row per table.
pub fn redb_commit_by_tables() -> anyhow::Result<Json> {
    use redb::{Database, TableDefinition};
    const NAMES: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];
    let dir = tempfile::tempdir_in(crate::root().join("target")).context("creating a temp folder under target/")?;
    let mut out = serde_json::Map::new();
    for tables in [1usize, 2, 4, 8] {
        let db = Database::create(dir.path().join(format!("t{tables}.redb")))?;
        let defs: Vec<TableDefinition<u64, &[u8]>> = NAMES[..tables].iter().map(|n| TableDefinition::new(n)).collect();
        let w = db.begin_write()?;
        for d in &defs {
            let mut t = w.open_table(*d)?;
            for i in 0..10_000u64 {
                t.insert(i, [1u8; 300].as_slice())?;
            }
        }
        w.commit()?;
        let mut samples = Vec::new();
        for k in 0..200u64 {
            let t = Instant::now();
            let w = db.begin_write()?;
            for d in &defs {
                w.open_table(*d)?.insert(100_000 + k, [2u8; 300].as_slice())?;
            }
            w.commit()?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        out.insert(tables.to_string(), json!(crate::stats::median(&samples)));
    }
    Ok(Json::Object(out))
}

/// The CPU time each live thread of this process has run so far, in ns, by
/// thread id, with the thread's name (`/proc/self/task/*/schedstat`).
#[derive(Debug, Clone, Default)]
pub struct Threads(std::collections::HashMap<u32, (String, u64)>);

impl Threads {
    pub fn now() -> anyhow::Result<Threads> {
        let mut threads = std::collections::HashMap::new();
        for task in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
            let task = task?;
            let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else { continue };
            // A thread can end between the listing and the reads: skip it
            // (its time is then not counted, which the caller accepts).
            let (Ok(name), Ok(stat)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("schedstat")),
            ) else {
                continue;
            };
            let ns = stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("/proc/self/task/{tid}/schedstat has no run time: {stat:?}"))?;
            threads.insert(tid, (name.trim().to_string(), ns));
        }
        Ok(Threads(threads))
    }

    /// The CPU time, in ns, each thread name has spent since `before` (a
    /// thread new since then counts from zero; one that has ended since is
    /// lost, so take `self` while the threads measured still run).
    pub fn since(&self, before: &Threads) -> std::collections::BTreeMap<String, u64> {
        let mut by_name = std::collections::BTreeMap::new();
        for (tid, (name, ns)) in &self.0 {
            let was = before.0.get(tid).filter(|(n, _)| n == name).map_or(0, |(_, ns)| *ns);
            *by_name.entry(name.clone()).or_insert(0) += ns.saturating_sub(was);
        }
        by_name
    }
}

#[cfg(test)]
mod tests {
    use super::Threads;

    #[test]
    fn a_busy_thread_is_counted_under_its_name() {
        let before = Threads::now().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let busy = std::thread::Builder::new()
            .name("bench-busy".into())
            .spawn(move || {
                // Spin until this thread itself has run 30 ms of CPU.
                let own = || -> u64 {
                    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
                    stat.split_whitespace().next().unwrap().parse().unwrap()
                };
                let start = own();
                let mut x = 0u64;
                while own() - start < 30_000_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                tx.send(()).unwrap();
                // Stay alive until measured.
                std::thread::sleep(std::time::Duration::from_millis(200));
            })
            .unwrap();
        rx.recv().unwrap();
        let spent = Threads::now().unwrap().since(&before);
        busy.join().unwrap();
        let ns = spent.get("bench-busy").copied().unwrap_or(0);
        assert!(ns >= 30_000_000, "the busy thread ran 30 ms of CPU but was counted {ns} ns: {spent:?}");
    }
}
