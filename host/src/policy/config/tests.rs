//! The config parser's tests: every key's checks, and each error naming
//! its file and line.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"), Path::new("/base"))
}

const GOOD: &str = r#"
[kb]
path = "kb.redb"

[limits]
memory_mib = 32

[kinds.customer.fields]
status = { type = "text", writers = ["sales", "support"] }
deal_stage = { type = "text", owner = "sales" }
"#;

#[test]
fn good_config_loads_with_paths_relative_to_the_file() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.kb_path, Path::new("/base/kb.redb"));
    assert_eq!(c.agents_dir, Path::new("/base/agents"));
    assert_eq!(c.limits.memory_bytes, 32 << 20);
    let f = &c.schema.kinds["customer"].fields["deal_stage"];
    assert_eq!(f.writers, Writers::Owner("sales".into()));
    assert_eq!(f.line, 10);
}

#[test]
fn errors_name_the_file_and_line() {
    let text = "[kinds.customer.fields]\nstatus = { type = \"text\", owner = \"sales\" }\nage = { type = \"number\", owner = \"sales\" }\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().starts_with("test.toml:3:"), "{e}");
    assert!(e.message.contains("unknown type `number`"), "{e}");
    assert!(e.message.contains("integer"), "the error lists the valid types: {e}");
}

#[test]
fn leases_are_bounded_and_granted_by_kind() {
    let text = "[limits]\nlease_max_ms = 5000\n[kinds.c]\nleases = [\"coordinator\"]\n[kinds.c.fields]\nx = { type = \"text\", owner = \"a\" }\n";
    let c = parse(text).expect("valid");
    assert_eq!(c.limits.lease_max_ms, 5000);
    let kind = &c.schema.kinds["c"];
    assert!(kind.may_lease("a") && kind.may_lease("coordinator") && !kind.may_lease("b"));
    assert_eq!(kind.lessees(), ["a", "coordinator"]);
    assert_eq!(Limits::default().lease_max_ms, 60_000, "no lease is open-ended by default");
    let e =
        parse("[kinds.c]\nleases = [\" \"]\n[kinds.c.fields]\nx = { type = \"text\", owner = \"a\" }\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e =
        parse("[limits]\nlease_max_ms = 0\n[kinds.c.fields]\nx = { type = \"text\", owner = \"a\" }\n").unwrap_err();
    assert!(e.message.contains("lease_max_ms"), "{e}");
}

#[test]
fn field_without_owner_is_refused() {
    let e = parse("[kinds.c.fields]\nx = { type = \"text\" }\n").unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("no `owner` and no `writers`"), "{e}");
}

#[test]
fn owner_and_writers_together_are_refused() {
    let e = parse("[kinds.c.fields]\nx = { type = \"text\", owner = \"a\", writers = [\"b\"] }\n").unwrap_err();
    assert!(e.message.contains("both"), "{e}");
}

#[test]
fn unknown_keys_and_syntax_errors_are_refused_with_a_line() {
    let e = parse("[kinds.c.fields]\nx = { type = \"text\", owner = \"a\" }\n[limits]\nmemroy_mib = 3\n").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.message.contains("memroy_mib"), "{e}");
    let e = parse("[kinds.c.fields\n").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn zero_limits_and_bad_names_are_refused() {
    let e = parse("[limits]\nfuel = 0\n[kinds.c.fields]\nx = { type = \"text\", owner = \"a\" }\n").unwrap_err();
    assert_eq!(e.line, Some(2));
    let e = parse("[kinds.\"a/b\".fields]\nx = { type = \"text\", owner = \"a\" }\n").unwrap_err();
    assert!(e.message.contains("kind `a/b`"), "{e}");
}

#[test]
fn rules_and_subscriptions_are_checked_at_load() {
    let base = "[kinds.c.fields]\nx = { type = \"integer\", owner = \"a\" }\n";
    let good =
        format!("{base}[[rules]]\nname = \"r\"\nwhen = \"entity.x > 0\"\neffect = \"defer\"\nreason = \"wait\"\n");
    assert_eq!(parse(&good).expect("valid").rules.iter().count(), 1);
    let e =
        parse(&format!("{base}[[rules]]\nname = \"r\"\nwhen = \"entity.x >\"\neffect = \"defer\"\nreason = \"\"\n"))
            .unwrap_err();
    assert!(e.message.contains("not valid CEL"), "{e}");
    assert_eq!(e.line, Some(5), "{e}");
    let e = parse(&format!("{base}[[rules]]\nname = \"r\"\nwhen = \"true\"\neffect = \"block\"\nreason = \"\"\n"))
        .unwrap_err();
    assert!(e.message.contains("`block`"), "{e}");
    let e = parse(&format!("{base}[[subscriptions]]\nagent = \"a\"\nkind = \"d\"\n")).unwrap_err();
    assert!(e.message.contains("unknown kind `d`"), "{e}");
    let e = parse(&format!("{base}[[subscriptions]]\nagent = \"a\"\nkind = \"c\"\nfields = [\"y\"]\n")).unwrap_err();
    assert!(e.message.contains("no field `y`"), "{e}");
}

#[test]
fn schedules_are_checked_whole_and_each_error_names_the_schedule_and_line() {
    let base = "[kinds.c.fields]\nx = { type = \"integer\", owner = \"a\" }\n";
    let one = |rest: &str| format!("{base}[[schedules]]\nname = \"s\"\nagent = \"a\"\nkind = \"tick\"\n{rest}");
    let c = parse(&one("every = \"15m\"\nbody = { n = 1 }\nentity = \"c/one\"\n")).expect("valid");
    let s = &c.schedules[0];
    assert_eq!((s.name.as_str(), s.body.as_str(), s.line), ("s", r#"{"n":1}"#, 3));
    assert_eq!(s.describe(), "every 15m");
    let c = parse(&one(
        "cron = \"0 9 * * MON-FRI\"\ntimezone = \"Europe/Paris\"\ncatch_up = \"once\"\nbody = '{\"a\": [1]}'\n",
    ))
    .expect("valid");
    assert_eq!(c.schedules[0].catch_up, crate::coord::schedule::CatchUp::Once);

    for (rest, line, says) in [
        ("cron = \"0 25 * * *\"\n", 7, "not a cron expression"),
        ("cron = \"0 0 31 2 *\"\n", 7, "never fires"),
        ("cron = \"0 9 * * *\"\ntimezone = \"Mars/Olympus\"\n", 7, "Mars/Olympus"),
        ("every = \"soon\"\n", 7, "not an interval"),
        ("every = \"500ms\"\n", 7, "not an interval"),
        ("every = \"1m\"\ncron = \"* * * * *\"\n", 7, "both"),
        ("every = \"1m\"\ntimezone = \"UTC\"\n", 7, "applies to `cron` only"),
        ("", 3, "needs `every"),
        ("every = \"1m\"\ncatch_up = \"all\"\n", 8, "\"skip\" or \"once\""),
        ("every = \"1m\"\nbody = \"{not json\"\n", 8, "not JSON"),
        ("every = \"1m\"\nentity = \"d/one\"\n", 8, "d"),
        ("every = \"1m\"\nevery_day = true\n", 8, "every_day"),
    ] {
        let e = parse(&one(rest)).unwrap_err();
        assert_eq!(e.line, Some(line), "{rest}: {e}");
        assert!(e.message.contains(says), "{rest}: {e}");
        if rest.contains("every_day") {
            continue;
        }
        assert!(e.message.starts_with("schedule `s`"), "{rest}: names the schedule: {e}");
    }
    let twice = format!(
        "{}[[schedules]]\nname = \"s\"\nagent = \"a\"\nkind = \"k\"\nevery = \"1h\"\n",
        one("every = \"1m\"\n")
    );
    let e = parse(&twice).unwrap_err();
    assert!(e.message.contains("declared twice") && e.line == Some(9), "{e}");
    let e = parse(&one("every = \"1m\"\n").replace("name = \"s\"", "name = \"nightly report\"")).unwrap_err();
    assert!(e.message.contains("a name is 1 to 64"), "{e}");
}

#[test]
fn the_server_table_has_defaults_and_checked_values() {
    let base = "[kinds.c.fields]\nx = { type = \"integer\", owner = \"a\" }\n";
    let c = parse(base).expect("valid");
    assert_eq!(c.server, super::super::server::ServerConfig::default());
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:7700");
    let c = parse(&format!("{base}[server]\nlisten = \"0.0.0.0:80\"\ntokens = \"t.toml\"\ndrain_ms = 50\n"))
        .expect("valid");
    assert_eq!(c.server.listen.port(), 80);
    assert_eq!(c.server.tokens.as_deref(), Some(Path::new("/base/t.toml")));
    assert_eq!(c.server.drain, Duration::from_millis(50));
    let e = parse(&format!("{base}[server]\nlisten = \"localhost\"\n")).unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.message.contains("IP:PORT"), "{e}");
    let e = parse(&format!("{base}[server]\nqueue = 0\n")).unwrap_err();
    assert!(e.message.contains("server.queue must be greater than 0"), "{e}");
    let e = parse(&format!("{base}[server]\nlisten_on = 1\n")).unwrap_err();
    assert!(e.message.contains("listen_on"), "{e}");
}

#[test]
fn a_config_without_kinds_is_refused() {
    let e = parse("[kb]\npath = \"x\"\n").unwrap_err();
    assert!(e.message.contains("no entity kinds"), "{e}");
}

#[test]
fn the_kb_backend_is_redb_or_postgres_with_a_server() {
    let kinds = "[kinds.c.fields]\nx = { type = \"integer\", owner = \"a\" }\n";
    let c = parse(&format!("[kb]\npath = \"kb.redb\"\n{kinds}")).expect("redb by default");
    assert!(matches!(c.kb_backend(), crate::kb::Backend::Redb { .. }));

    let c = parse(&format!("[kb]\nbackend = \"postgres\"\nurl = \"postgres://u:hunter2@db/kb\"\npool = 3\n{kinds}"))
        .expect("postgres");
    let crate::kb::Backend::Postgres(options) = c.kb_backend() else { panic!("postgres") };
    assert_eq!(options.pool, 3);
    // What logs and config-reload entries show of it: never the password.
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2") && shown.contains("db:5432/kb as u"), "{shown}");

    let e = parse(&format!("[kb]\nbackend = \"sqlite\"\n{kinds}")).unwrap_err();
    assert!(e.message.contains("`sqlite`") && e.message.contains("\"postgres\""), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
    let e =
        parse(&format!("[kb]\nbackend = \"postgres\"\nurl = \"postgres://u@db/kb\"\npool = 0\n{kinds}")).unwrap_err();
    assert!(e.message.contains("kb.pool is between 1 and 256"), "{e}");
    let e = parse(&format!("[kb]\nurl = \"postgres://u@db/kb\"\n{kinds}")).unwrap_err();
    assert!(e.message.contains("kb.url is for backend = \"postgres\""), "{e}");
}
