"""Which Python interpreter fastgw runs under, and how that interpreter was built.

fastgw (and the open-loop generator) are started with ``sys.executable``, the
interpreter running the bench, so that is the one described here.  Its build matters:
on the project's machine a CPython 3.11 without PGO/LTO (pyenv's default) runs
function calls 1.65x slower than Debian's PGO+LTO build, and fastgw's worker spends
about 8 % more CPU per request under it.

Rules:
  1. The build facts come from ``sysconfig`` (CONFIG_ARGS and the compiler/linker
     flag variables) and say "yes", "no" or "unknown"; never a guess.
       PGO: ``--enable-optimizations`` in CONFIG_ARGS, or ``-fprofile-use`` /
            ``-fprofile-instr-use`` in a flag variable.  PGO_PROF_USE_FLAG is NOT
            evidence: configure sets it whether or not PGO was used.
       LTO: ``--with-lto`` (not ``=no``) in CONFIG_ARGS, or ``-flto`` in a flag variable.
  2. sysconfig describes one build.  "no" is said only when that build is the
     interpreter that runs: a shared build (Py_ENABLE_SHARED) whose executable really
     loads libpython, or a static build whose executable does not.  Debian builds its
     static /usr/bin/python3.X separately from libpython (with PGO and LTO, flags it
     keeps out of sysconfig) and installs the shared build's sysconfig: shared, but
     the executable does not load libpython, so PGO and LTO are "unknown" there.
  3. Whether the executable loads libpython is read from the running process: the
     file mapped at the address of ``Py_IsInitialized`` (/proc/self/maps).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import sysconfig

# variables that may carry the compiler and linker flags the interpreter was built with
FLAG_VARS = (
    "OPT", "CFLAGS", "PY_CFLAGS", "PY_CFLAGS_NODIST", "CFLAGS_NODIST", "CONFIGURE_CFLAGS_NODIST",
    "PY_CORE_CFLAGS", "LDFLAGS", "PY_LDFLAGS", "PY_LDFLAGS_NODIST", "LDFLAGS_NODIST",
    "CONFIGURE_LDFLAGS_NODIST", "PY_CORE_LDFLAGS", "LTOFLAGS", "LTOCFLAGS",
)

UNOPTIMIZED_WARNING = (
    "fastgw's figures are for an unoptimized interpreter (no PGO); a PGO+LTO build is faster"
    " (Debian's python3, or pyenv with PYTHON_CONFIGURE_OPTS='--enable-optimizations --with-lto');"
    " see docs/bench.md, The interpreter"
)


def _tokens(value: object) -> list[str]:
    if not isinstance(value, str) or not value:
        return []
    try:
        return shlex.split(value)
    except ValueError:  # unbalanced quotes: fall back to whitespace
        return value.split()


def _configure_option(config_args: list[str], name: str) -> bool:
    """True when ``--name`` or ``--name=VALUE`` (VALUE not no/false) is among the configure arguments."""
    for arg in config_args:
        if arg == name:
            return True
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1].lower() not in ("no", "false", "0")
    return False


def build_facts(config: dict, loads_libpython: bool | None) -> dict:
    """PGO, LTO and linkage from sysconfig-like variables (pure: no I/O).

    ``loads_libpython``: whether the running executable has libpython loaded (None: not
    known).  Returns {"pgo", "lto": "yes"|"no"|"unknown", "shared_libpython": bool,
    "loads_libpython": bool|None, "sysconfig_describes_executable": bool|None, "evidence": [...]}.
    """
    config_args = _tokens(config.get("CONFIG_ARGS"))
    flags = [t for var in FLAG_VARS for t in _tokens(config.get(var))]
    shared = bool(config.get("Py_ENABLE_SHARED"))

    evidence = []
    pgo_seen = _configure_option(config_args, "--enable-optimizations")
    if pgo_seen:
        evidence.append("--enable-optimizations in CONFIG_ARGS")
    profile_flags = sorted({f for f in flags if f.startswith(("-fprofile-use", "-fprofile-instr-use"))})
    if profile_flags:
        pgo_seen = True
        evidence.append(f"{' '.join(profile_flags)} in the compiler flags")
    lto_seen = _configure_option(config_args, "--with-lto")
    if lto_seen:
        evidence.append("--with-lto in CONFIG_ARGS")
    lto_flags = sorted({f for f in flags if f.startswith("-flto")})
    if lto_flags:
        lto_seen = True
        evidence.append(f"{' '.join(lto_flags)} in the compiler flags")

    describes = None if loads_libpython is None else shared == loads_libpython

    def verdict(seen: bool) -> str:
        if describes is not True:
            return "unknown"  # the flags seen (or not) belong to another build than this executable
        return "yes" if seen else "no"

    return {
        "pgo": verdict(pgo_seen),
        "lto": verdict(lto_seen),
        "shared_libpython": shared,
        "loads_libpython": loads_libpython,
        "sysconfig_describes_executable": describes,
        "evidence": evidence,
    }


def interpreter_image() -> str | None:
    """The file the running interpreter's core code is mapped from (the executable or libpython), or None."""
    try:
        import ctypes

        addr = ctypes.cast(ctypes.pythonapi.Py_IsInitialized, ctypes.c_void_p).value
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) < 6:
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi:
                    return parts[5].strip()
    except (ImportError, AttributeError, OSError, ValueError, TypeError):
        pass
    return None


def describe() -> dict:
    """The interpreter fastgw is started with (``sys.executable``): version, path and build facts."""
    image = interpreter_image()
    loads = None if image is None else os.path.basename(image).startswith("libpython")
    facts = build_facts(sysconfig.get_config_vars(), loads)
    info = {
        "implementation": platform.python_implementation(),
        "version": platform.python_version(),
        "build": " ".join(platform.python_build()),
        "compiler": platform.python_compiler(),
        "executable": sys.executable,
        "executable_resolved": os.path.realpath(sys.executable),
        "interpreter_image": image,
        **facts,
    }
    info["summary"] = summary(info)
    return info


def summary(info: dict) -> str:
    """One line for the report header."""
    head = (f"{info['implementation']} {info['version']} at {info['executable_resolved']}"
            f" ({info['build']}, {info['compiler']}): PGO {info['pgo']}, LTO {info['lto']}")
    shared = "a shared" if info["shared_libpython"] else "a static"
    if info["loads_libpython"] is None:
        return f"{head}; sysconfig describes {shared} libpython build, the executable's linkage is unknown"
    if info["loads_libpython"] and info["shared_libpython"]:
        return f"{head}, libpython shared ({os.path.basename(info['interpreter_image'])})"
    if not info["loads_libpython"] and not info["shared_libpython"]:
        return f"{head}, interpreter linked statically into the executable"
    where = "loaded from libpython" if info["loads_libpython"] else "linked statically into the executable"
    note = "" if info["loads_libpython"] else " (as in Debian's python3, whose static executable is built with PGO+LTO)"
    return f"{head}: the interpreter is {where} while sysconfig describes {shared} libpython build{note}"


def unoptimized(info: dict) -> bool:
    """True when the interpreter is known to be built without PGO."""
    return info.get("pgo") == "no"
