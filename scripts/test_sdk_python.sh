#!/usr/bin/env bash
# The Python SDK's tests (agents/sdk-python/tests), with the stdlib's unittest
# in the toolchain's CPython: the helpers, and the Python agents (Support, the
# conformance agent) against a fake host. The bindings are generated from
# wit/ into a temporary folder by the tests themselves. Installs the
# toolchain first (scripts/toolchain_python.sh; silent when it is there).
#
#   scripts/test_sdk_python.sh [-v]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/toolchain_python.sh"
cd "$root"
exec env PYTHONDONTWRITEBYTECODE=1 target/toolchains/python/bin/python -m unittest discover -s agents/sdk-python/tests "$@"
