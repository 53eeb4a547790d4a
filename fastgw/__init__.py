"""fastgw: a production API gateway in Python.

Layering (DESIGN.md, checked by import-linter): errors/clock -> config -> http wire,
shm, cache -> protocol, routing, upstream -> pipeline, obs -> engine -> middleware ->
runtime -> supervisor -> cli.  Nothing here creates an event loop or a socket at import
time, so every module is safe to import in the supervisor before fork.
"""

__version__ = "0.1.0"
