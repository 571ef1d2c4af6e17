#!/usr/bin/env bash
# `just dev`: the example agents rebuilt as their sources change, and a
# running `concord serve` that picks each build up through hot reload.
#
# - Builds the agents with `concord build`, which installs each into
#   agents/ only if it changed, by writing beside it and renaming over it:
#   the host never sees a file half-written (it also waits for a file to
#   settle; see README "While it runs").
# - Starts `concord serve` (with any arguments given), unless --no-serve
#   is given (when a host serves already, for example).
# - Looks at the sources every second (the agents' folders, the SDKs and
#   wit/): polling, so that it needs no inotify tools and sees
#   edits on any filesystem. A failed build is printed and the last good
#   agents keep serving.
#
# Ctrl-C stops the loop and the server it started.
set -euo pipefail

cd "$(dirname "$0")/.."
agents=(sales support product)
serve=1
serve_args=()
for arg in "$@"; do
    case "$arg" in
        --no-serve) serve=0 ;;
        *) serve_args+=("$arg") ;;
    esac
done

# Whether a source is newer than the file $1.
changed_since() {
    [[ -n "$(find wit agents/sdk agents/sdk-python agents/sdk-js/src "${agents[@]/#/agents/}" \
        \( -name target -o -name node_modules -o -name __pycache__ \) -prune -o -type f \
        \( -name '*.rs' -o -name '*.wit' -o -name Cargo.toml -o -name '*.py' -o -name '*.ts' \) \
        -newer "$1" -print -quit)" ]]
}

build_and_install() {
    if ! ./target/debug/concord build "${agents[@]}"; then
        echo "dev: the build failed; the agents in service stay as they were" >&2
    fi
}

stamp=$(mktemp)
next=$(mktemp)
server_pid=""
interrupted=0
cleanup() {
    rm -f "$stamp" "$next"
    if [[ -n "$server_pid" ]]; then
        # Ctrl-C reached the server too (one process group), and it is
        # draining: a second signal would stop it at once.
        if [[ "$interrupted" == 0 ]]; then
            kill -TERM "$server_pid" 2>/dev/null || true
        fi
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'interrupted=1; exit 0' INT
trap 'exit 0' TERM

# Taken before the first build, so that an edit made during it is seen.
touch "$stamp"
cargo build --quiet -p concord-host
build_and_install
if [[ "$serve" == 1 ]]; then
    # (The odd expansion keeps `set -u` quiet on bash before 4.4 when
    # there are no arguments.)
    ./target/debug/concord serve ${serve_args[@]+"${serve_args[@]}"} &
    server_pid=$!
fi
echo "dev: watching ${agents[*]}, the SDK and wit/ (Ctrl-C stops)"
while sleep 1; do
    if [[ -n "$server_pid" ]] && ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid" || true
        echo "dev: concord serve exited; stopping" >&2
        server_pid=""
        exit 1
    fi
    # The next stamp is taken before the look, so that an edit made while
    # looking or building is seen the next time round.
    touch "$next"
    if changed_since "$stamp"; then
        cp -p "$next" "$stamp"
        echo "dev: sources changed; building"
        build_and_install
    fi
done
