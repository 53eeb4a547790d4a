"""Architecture as a test (STYLE.md item 14).

1. Every module under fastgw/ imports alone, in a fresh interpreter: no hidden import
   order dependency, no cycle that only works from one entry point, and no event loop,
   socket or thread created at import (the worker must be forkable).
2. The DESIGN.md layer rule holds: import-linter's contract in pyproject.toml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "fastgw")


def _modules() -> list[str]:
    mods = []
    for dirpath, dirnames, filenames in os.walk(PKG):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = os.path.relpath(dirpath, ROOT).replace(os.sep, ".")
        for f in sorted(filenames):
            if f.endswith(".py"):
                mods.append(rel if f == "__init__.py" else f"{rel}.{f[:-3]}")
    return mods


# The CLI entry point runs the CLI when imported (that is what ``python -m fastgw`` is for).
MODULES = [m for m in _modules() if m != "fastgw.__main__"]

# One fresh interpreter imports every module in isolation: before each import, every
# ``fastgw`` module is removed from sys.modules, so a module that only works when
# something else of ours was imported first fails here.  Third-party modules stay loaded
# (they are not ours to check and re-importing them is what makes a subprocess per
# module slow).  After each import: no thread, socket or event loop was created.
_PROBE = r"""
import gc, importlib, json, socket, sys, threading, traceback
import asyncio.events as ev
results = {}
for name in sys.argv[1:]:
    for k in [k for k in sys.modules if k == "fastgw" or k.startswith("fastgw.")]:
        del sys.modules[k]
    try:
        importlib.import_module(name)
        extra = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        assert not extra, f"threads started at import: {extra}"
        assert ev._get_running_loop() is None, "event loop running at import"
        pol = ev._event_loop_policy
        local = getattr(pol, "_local", None) if pol is not None else None
        assert getattr(local, "_loop", None) is None, "event loop created at import"
        results[name] = [0, ""]
    except BaseException:
        results[name] = [1, traceback.format_exc()[-2000:]]
socks = [repr(o) for o in gc.get_objects() if isinstance(o, socket.socket)]
print(json.dumps({"results": results, "sockets": socks}))
"""


@pytest.fixture(scope="module")
def import_results() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([sys.executable, "-c", _PROBE, *MODULES], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_no_socket_created_by_any_import(import_results):
    assert import_results["sockets"] == []


def test_module_list_is_not_empty():
    assert "fastgw.http.protocol" in MODULES and "fastgw.pipeline.engine" in MODULES


@pytest.mark.parametrize("mod", MODULES)
def test_module_imports_alone(import_results, mod):
    rc, err = import_results["results"][mod]
    assert rc == 0, f"`import {mod}` in a fresh interpreter failed:\n{err}"


def test_import_linter_contracts():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("lint-imports (import-linter) is not installed")
    p = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert p.returncode == 0, f"import-linter contracts broken:\n{p.stdout[-4000:]}\n{p.stderr[-2000:]}"
    assert "0 broken" in p.stdout, p.stdout[-2000:]
