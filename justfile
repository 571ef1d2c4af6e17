# Concord tasks. `just run` plays the demo; `just test` runs the whole gate.
set shell := ["bash", "-euo", "pipefail", "-c"]

# The example agents: Sales in Rust, Support in Python (agents/support/app.py),
# Product in TypeScript (agents/product/index.ts). `concord build` builds each
# by its language; the Rust ones are also linted below.
agents := "sales support product"
rust_agents := "sales"
# Rust guests get their own target dir, target/wasm, so that tests can build
# them while `cargo test` holds the host's build lock.
test_agents := "probe hostile wrong-world bench-agent conformance"

# List the recipes
default:
    @just --list

# Install what the build needs: the wasm32-wasip2 target
setup:
    @rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Build the example agents into agents/*.wasm with `concord build` (it installs
# the Python and JavaScript toolchains under target/ and agents/sdk-js on first
# use) and compile them into the host's cache
build-agents: setup build
    ./target/debug/concord build {{ agents }}

# Build the host (the `concord` binary)
build:
    cargo build -p concord-host

# Play the Acme scenario on a fresh knowledge base, then show what happened
run: build-agents build
    rm -f data/concord.redb data/concord.redb.journal data/actions.jsonl
    ./target/debug/concord run --script scenarios/acme.jsonl
    @echo; echo "== a human override (concord pin), and what the agents can do then =="
    ./target/debug/concord pin customer/acme status=active --by alice --reason "CEO call: keep Acme active this week"
    ./target/debug/concord run --script scenarios/override.jsonl
    ./target/debug/concord unpin customer/acme status --by alice --reason "the week is over"
    @echo; echo "== the audit trail (concord audit) =="
    ./target/debug/concord audit
    @echo; echo "== Acme's history (concord history customer/acme) =="
    ./target/debug/concord history customer/acme
    @echo; echo "== the current state (concord get customer/acme) =="
    ./target/debug/concord get customer/acme
    @echo; echo "== actions delivered to data/actions.jsonl (concord actions) =="
    ./target/debug/concord actions
    @echo; echo "== replay: the projection rebuilt from the events (concord replay) =="
    ./target/debug/concord replay
    @echo; echo "== who got in whose way (concord conflicts) =="
    ./target/debug/concord conflicts

# The Acme scenario with two hosts on one PostgreSQL, which it starts and stops itself (see README "Several hosts on PostgreSQL")
run-pg: build-agents build
    python3 scripts/run_pg.py

# Run the host as a service on http://127.0.0.1:7700 (an optimised build; see README "Run as a service")
serve *args: build-agents
    cargo build --release -p concord-host
    ./target/release/concord serve {{ args }}

# Rebuild the example agents as their sources change, under a running `concord serve` that picks them up (hot reload); `--no-serve` to only rebuild
dev *args: setup
    scripts/dev.sh {{ args }}

# Run any concord command, e.g. `just concord history customer/acme`
concord *args: build
    ./target/debug/concord {{ args }}

# What the console's browser tests need: playwright-core (npm ci from the lockfile) and Debian's Chromium
console-setup:
    scripts/console_setup.sh

# Screenshots of the console's main views, into docs/console/ (from its browser tests)
console-shots: console-setup
    CONCORD_CONSOLE_SHOTS=docs/console cargo test -p concord-host --test e2e console

# The whole gate: formatting, lints (host and guests), and every test (the console's in headless Chromium)
test: setup console-setup
    cargo fmt --all -- --check
    cargo clippy -p concord-host --all-targets -- -D warnings
    cargo clippy -p concord-bench --all-targets -- -D warnings
    cargo clippy --release --target wasm32-wasip2 --target-dir target/wasm {{ prepend("-p ", rust_agents) }} {{ prepend("-p ", test_agents) }} -p concord-agent -- -D warnings
    cargo build --release --target wasm32-wasip2 --target-dir target/wasm {{ prepend("-p ", rust_agents) }} {{ prepend("-p ", test_agents) }}
    scripts/test_sdk_python.sh
    scripts/toolchain_js.sh && npm test --silent --prefix agents/sdk-js
    cargo test -p concord-host
    scripts/fuzz_api.sh 10

# The API fuzzed from its OpenAPI document (schemathesis), longer (default 200 examples per operation)
fuzz-api examples="200": setup build
    cargo build --release --target wasm32-wasip2 --target-dir target/wasm {{ prepend("-p ", rust_agents) }}
    ./target/debug/concord build {{ agents }} --out target/agents
    scripts/fuzz_api.sh {{ examples }}

# The crash test, longer: kill-and-restart rounds under load (default 30)
crash-test rounds="30": setup
    cargo build --release --target wasm32-wasip2 --target-dir target/wasm {{ prepend("-p ", rust_agents) }} {{ prepend("-p ", test_agents) }}
    CONCORD_CRASH_ROUNDS={{ rounds }} cargo test -p concord-host --test e2e crash:: -- --nocapture

# The benchmarks, each against its baseline in the same run (see BENCHMARKS.md);
# `just bench --quick` for a short run. Results in target/bench/.
bench *args: setup
    cargo bench -p concord-bench --bench concord -- {{ args }}

# The property tests (config parser, commit validation), longer (default 20000 cases each)
fuzz cases="20000":
    PROPTEST_CASES={{ cases }} cargo test -p concord-host --lib props
