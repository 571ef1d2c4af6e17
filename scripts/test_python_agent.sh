#!/usr/bin/env bash
# Runs a Python agent's own tests (AGENT_DIR/test_*.py) with the stdlib's
# unittest in the toolchain's CPython: the agent's module, the SDK
# (agents/sdk-python), its fake host and bindings generated from wit/
# (agents/sdk-python/tests) on the path. `concord new --lang python` makes
# an agent with such a test.
#
#   scripts/test_python_agent.sh AGENT_DIR [-v]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: scripts/test_python_agent.sh AGENT_DIR [-v]  (AGENT_DIR: a folder with app.py and test_*.py)" >&2
    exit 2
fi
agent="$(cd "$1" && pwd)"
shift
if ! ls "$agent"/test_*.py >/dev/null 2>&1; then
    echo "test_python_agent: $agent has no test_*.py to run" >&2
    exit 1
fi
"$root/scripts/toolchain_python.sh"
cd "$agent"
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$agent:$root/agents/sdk-python/tests:$root/agents/sdk-python" \
    "$root/target/toolchains/python/bin/python" -m unittest discover -s "$agent" -p 'test_*.py' "$@" ||
    { echo "test_python_agent: the tests of $agent failed (above)" >&2; exit 1; }
