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

from tests.support import ROOT  # noqa: E402

# the import probe runs ~140 fresh imports under a time bound: alone, not beside another test
# (beside one on a loaded 2-core box it ran past its 180 s bound)
pytestmark = pytest.mark.timing

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
                       capture_output=True, text=True, timeout=180)  # a hang guard; ~15 s on an idle box
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


def _lint_imports() -> str:
    """``lint-imports`` of the interpreter running the tests (installed with the test
    extra); missing is a failure, never a skip: the layer rules must be checked."""
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    assert os.access(exe, os.X_OK), f"lint-imports not found next to {sys.executable} (pip install -e '.[test]')"
    return exe


def test_import_linter_contracts():
    exe = _lint_imports()
    p = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert p.returncode == 0, f"import-linter contracts broken:\n{p.stdout[-4000:]}\n{p.stderr[-2000:]}"
    assert "0 broken" in p.stdout, p.stdout[-2000:]


def test_import_linter_contracts_name_only_existing_packages():
    """A contract that names a package that does not exist checks nothing: every module
    the contracts list (optional ones included) exists."""
    import importlib.util
    import re
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    names = set()
    for c in contracts:
        for key in ("layers", "modules", "source_modules", "forbidden_modules"):
            for entry in c.get(key, ()):
                names.update(n for n in re.split(r"[:|\s()]+", entry) if n and "*" not in n)
    missing = sorted(n for n in names if importlib.util.find_spec(n) is None)
    assert not missing, f"contracts name modules that do not exist: {missing}"
    kinds = {c["type"] for c in contracts}
    assert {"layers", "independence", "forbidden"} <= kinds


def test_import_linter_refuses_a_middleware_importing_the_upstream_side(tmp_path):
    """The forbidden contract bites: a copy of the tree whose middleware imports
    ``fastgw.upstream.pool`` is refused (the same for the engine or the protocol)."""
    shutil.copytree(os.path.join(ROOT, "fastgw"), tmp_path / "fastgw",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    mw = tmp_path / "fastgw" / "middleware" / "security_headers.py"
    mw.write_text(mw.read_text() + "\nimport fastgw.upstream.pool  # noqa: E402,F401\n")
    p = subprocess.run([_lint_imports(), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert p.returncode != 0, p.stdout[-2000:]
    assert "security_headers -> fastgw.upstream.pool" in p.stdout, p.stdout[-3000:]
