#!/usr/bin/env bash
# Installs the Python agents' toolchain (componentize-py, pinned by hash in
# agents/sdk-python/requirements-build.txt) into a virtualenv at
# target/toolchains/python, when it is missing or the requirements file (or
# the Python it was made with) changed since the last install. Idempotent and
# silent when there is nothing to do; needs only python3 (3.11 or later, with
# its venv module) and a package registry. (componentize-py runs on 3.10, but
# the bindings it generates import `typing.Self`, so the SDK's tests need 3.11.)
#
#   scripts/toolchain_python.sh      # then: scripts/build_python_agent.sh AGENT_DIR OUT.wasm
#   target/toolchains/python/bin/componentize-py --version
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
reqs="$root/agents/sdk-python/requirements-build.txt"
venv="$root/target/toolchains/python"
stamp="$venv/.concord-toolchain"

need() {
    echo "toolchain_python: $1" >&2
    exit 1
}

python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || need "$python is not installed: install Python 3.11 or later"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
    need "$("$python" --version 2>&1) is too old: the toolchain needs Python 3.11 or later"
[ -f "$reqs" ] || need "no requirements file at $reqs"

# What the install depends on: the requirements file and the Python version.
want="$(
    "$python" - "$reqs" <<'EOF'
import hashlib, sys
h = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
print(f"{h} python-{sys.version_info[0]}.{sys.version_info[1]}")
EOF
)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/componentize-py" ]; then
    exit 0
fi

echo "toolchain_python: installing componentize-py into target/toolchains/python (from $(basename "$reqs"))..." >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
if "$python" -m venv "$venv" >/dev/null 2>&1; then
    pip=("$venv/bin/python" -m pip)
elif rm -rf "$venv" && "$python" -m venv --without-pip "$venv" >/dev/null 2>&1 &&
    "$python" -m pip --version >/dev/null 2>&1; then
    # Debian's python3 without python3-venv has no ensurepip: drive the
    # virtualenv with the system's pip instead (pip 22.3 or later).
    pip=("$python" -m pip --python "$venv/bin/python")
else
    rm -rf "$venv"
    need "could not create a virtualenv with $python (on Debian or Ubuntu: apt-get install python3-venv)"
fi
# Wheels only (the source build needs Rust and takes long), each checked
# against its hash.
if ! "${pip[@]}" install --quiet --disable-pip-version-check --no-input \
    --require-hashes --only-binary=:all: -r "$reqs" >&2; then
    rm -rf "$venv"
    need "pip install failed (is PyPI reachable? is there a componentize-py wheel for this platform? see pip's output above)"
fi
echo "$want" >"$stamp"
echo "toolchain_python: ready ($("$venv/bin/componentize-py" --version 2>/dev/null || echo componentize-py))" >&2
