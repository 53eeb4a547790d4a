"""The pre-fork supervisor (L8): ``arbiter`` (the process manager), ``child`` (what runs
after fork), ``ipc`` (the messages on each child's channel), ``sockets`` (one
SO_REUSEPORT socket per worker slot), ``reload`` (what a HUP may change),
``metrics_store`` (the worker's metric store over shared memory), ``limits`` (the
open-file limit fitted to the config).

Nothing here imports an event loop at module level, and the supervisor process never
runs one: before its first fork it preloads the children's modules (``child.preload``:
imports only), and each child creates its loop after fork.
"""
