"""Puts the SDK and componentize-py's bindings of wit/ on the path, for the
tests to import `concord_agent` in plain CPython.

The bindings are generated fresh (`componentize-py -d wit -w agent bindings
DIR`) into a temporary folder, once per test run: nothing generated is
committed. Outside a component their import functions only raise
`NotImplementedError`, so each test replaces those it needs (see `FakeHost`).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SDK = os.path.join(ROOT, "agents", "sdk-python")


def _componentize_py():
    given = os.environ.get("COMPONENTIZE_PY")
    if given:
        return given
    beside = os.path.join(os.path.dirname(sys.executable), "componentize-py")
    if os.path.exists(beside):
        return beside
    venv = os.path.join(ROOT, "target", "toolchains", "python", "bin", "componentize-py")
    if os.path.exists(venv):
        return venv
    found = shutil.which("componentize-py")
    if found:
        return found
    raise RuntimeError("componentize-py not found: run scripts/toolchain_python.sh (or scripts/test_sdk_python.sh)")


def setup():
    if getattr(setup, "done", False):
        return
    out = tempfile.mkdtemp(prefix="concord-py-bindings-")
    atexit.register(shutil.rmtree, out, True)
    subprocess.run(
        [_componentize_py(), "-d", os.path.join(ROOT, "wit"), "-w", "agent", "bindings", out],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    sys.path[:0] = [out, SDK]
    setup.done = True


setup()
