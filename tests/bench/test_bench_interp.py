"""The bench says which interpreter fastgw ran under and how it was built (bench/interp.py).

The flag parsing is tested on sysconfig-like dicts copied from the two interpreters of
the project's machine (pyenv's CPython 3.11.7 without PGO/LTO, Debian's 3.11.2 whose
static executable is PGO+LTO but whose sysconfig describes its shared libpython build),
then ``describe()`` on the interpreter running the tests.  No processes are started.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from tests.support import ROOT  # noqa: E402

REPO = Path(ROOT)
if str(REPO) not in sys.path:  # the bench package is not installed, it runs from the checkout
    sys.path.insert(0, str(REPO))

from bench import interp, report  # noqa: E402

PYENV = {  # /root/.pyenv/versions/3.11.7: ./configure --enable-shared, no --enable-optimizations
    "CONFIG_ARGS": "'--prefix=/root/.pyenv/versions/3.11.7' '--enable-shared'"
                   " '--libdir=/root/.pyenv/versions/3.11.7/lib'"
                   " 'LDFLAGS=-L/root/.pyenv/versions/3.11.7/lib -Wl,-rpath,/root/.pyenv/versions/3.11.7/lib'",
    "PY_CFLAGS": "-Wsign-compare -DNDEBUG -g -fwrapv -O3 -Wall",
    "PY_CFLAGS_NODIST": "-std=c11 -Wextra -fvisibility=hidden  -I./Include/internal",
    "CFLAGS_NODIST": "",
    "LDFLAGS_NODIST": "",
    "PGO_PROF_USE_FLAG": "-fprofile-use -fprofile-correction",  # set by configure whether PGO is used or not
    "Py_ENABLE_SHARED": 1,
}
DEBIAN = {  # /usr/bin/python3.11 (Debian 12): the shared build's sysconfig, LTO/PGO flags kept out of it
    "CONFIG_ARGS": "'--enable-shared' '--prefix=/usr' '--with-computed-gotos' '--without-ensurepip'"
                   " 'CFLAGS=-g   -fstack-protector-strong -Wformat -Werror=format-security '"
                   " 'LDFLAGS=  -g -fwrapv -O2   ' 'CPPFLAGS=-Wdate-time -D_FORTIFY_SOURCE=2'",
    "PY_CFLAGS": "-Wsign-compare -DNDEBUG -g -fwrapv -O2 -Wall -g   -fstack-protector-strong",
    "PY_CFLAGS_NODIST": "-std=c11 -Wextra -fvisibility=hidden  -I../Include/internal",
    "CFLAGS_NODIST": "",
    "PGO_PROF_USE_FLAG": "",
    "Py_ENABLE_SHARED": 1,
}


def test_pyenv_default_build_is_known_unoptimized() -> None:
    facts = interp.build_facts(PYENV, loads_libpython=True)
    assert (facts["pgo"], facts["lto"]) == ("no", "no")
    assert facts["shared_libpython"] and facts["sysconfig_describes_executable"]
    assert facts["evidence"] == []  # PGO_PROF_USE_FLAG alone is not evidence of PGO
    assert interp.unoptimized(facts)


def test_debian_static_executable_is_unknown_not_unoptimized() -> None:
    facts = interp.build_facts(DEBIAN, loads_libpython=False)
    assert (facts["pgo"], facts["lto"]) == ("unknown", "unknown")
    assert facts["shared_libpython"] and facts["sysconfig_describes_executable"] is False
    assert not interp.unoptimized(facts)


def test_optimized_builds_are_recognised_from_configure_args_or_flags() -> None:
    pgo_lto = dict(PYENV, CONFIG_ARGS=PYENV["CONFIG_ARGS"] + " '--enable-optimizations' '--with-lto'")
    facts = interp.build_facts(pgo_lto, loads_libpython=True)
    assert (facts["pgo"], facts["lto"]) == ("yes", "yes"), facts
    # a static build (no --enable-shared) whose executable holds the interpreter
    static = {"CONFIG_ARGS": "'--prefix=/opt/py' '--enable-optimizations' '--with-lto=full'", "Py_ENABLE_SHARED": 0}
    facts = interp.build_facts(static, loads_libpython=False)
    assert (facts["pgo"], facts["lto"], facts["shared_libpython"]) == ("yes", "yes", False), facts
    # no configure option, but the flags say it (a build driven by hand: make profile-opt CFLAGS_NODIST=...)
    flagged = dict(PYENV, PY_CFLAGS_NODIST=PYENV["PY_CFLAGS_NODIST"] + " -fprofile-use -fprofile-correction",
                   LDFLAGS_NODIST="-flto=auto -g")
    facts = interp.build_facts(flagged, loads_libpython=True)
    assert (facts["pgo"], facts["lto"]) == ("yes", "yes"), facts
    assert any("-fprofile-use" in e for e in facts["evidence"]) and any("-flto=auto" in e for e in facts["evidence"])


def test_disabled_options_and_unknown_linkage() -> None:
    off = dict(PYENV, CONFIG_ARGS="'--enable-shared' '--enable-optimizations=no' '--with-lto=no'")
    assert (interp.build_facts(off, True)["pgo"], interp.build_facts(off, True)["lto"]) == ("no", "no")
    # the executable's linkage unknown: nothing is concluded, even from positive evidence
    on = dict(PYENV, CONFIG_ARGS="'--enable-shared' '--enable-optimizations'")
    assert interp.build_facts(on, None)["pgo"] == "unknown"
    assert interp.build_facts(PYENV, None)["pgo"] == "unknown"
    # a shared-build sysconfig with a static executable: the evidence is about another build
    assert interp.build_facts(on, False)["pgo"] == "unknown"
    assert interp.build_facts({}, None)["pgo"] == "unknown"  # empty sysconfig (e.g. not CPython)


def _info(config: dict, loads: bool, image: str) -> dict:
    info = {"implementation": "CPython", "version": "3.11.x", "build": "main", "compiler": "GCC 12.2.0",
            "executable": "/x/bin/python", "executable_resolved": "/x/bin/python3.11", "interpreter_image": image,
            **interp.build_facts(config, loads)}
    info["summary"] = interp.summary(info)
    return info


def test_report_header_names_the_interpreter_and_warns_when_unoptimized() -> None:
    doc = {
        "machine": {"date": "today", "cpu_model": "cpu", "cpus": 2, "memory_gib": 1.0, "kernel": "6", "python": "3.11",
                    "nginx": "1.22", "wrk": "wrk", "fastgw_commit": "abc"},
        "options": {"rounds": 1, "duration": 1, "warmup": 0.0},
        "pinning": [], "summary": {}, "skipped": [], "targets": [], "runs": [],
    }
    doc["machine"]["interpreter"] = _info(PYENV, True, "/x/lib/libpython3.11.so.1.0")
    md = report.markdown(doc)
    assert "PGO no, LTO no, libpython shared (libpython3.11.so.1.0)" in md, md
    assert "**Warning**" in md and "--enable-optimizations --with-lto" in md, md

    doc["machine"]["interpreter"] = _info(DEBIAN, False, "/x/bin/python3.11")
    md = report.markdown(doc)
    assert "PGO unknown, LTO unknown" in md and "linked statically" in md, md
    assert "**Warning**" not in md, md

    del doc["machine"]["interpreter"]  # a results.json from before the field: still renders
    assert report.markdown(doc).startswith("# fastgw bench")


def test_describe_runs_on_this_interpreter() -> None:
    info = interp.describe()
    assert info["version"] == platform.python_version()
    assert info["executable_resolved"] == os.path.realpath(sys.executable)
    assert os.path.exists(info["executable_resolved"])
    assert info["pgo"] in ("yes", "no", "unknown") and info["lto"] in ("yes", "no", "unknown")
    assert isinstance(info["shared_libpython"], bool)
    if sys.platform == "linux" and platform.python_implementation() == "CPython":
        assert info["interpreter_image"], info  # found in /proc/self/maps
        assert info["loads_libpython"] is (os.path.basename(info["interpreter_image"]).startswith("libpython"))
    assert info["summary"].startswith(f"{info['implementation']} {info['version']} at "), info["summary"]
