"""The pre-fork supervisor (L8): ``arbiter`` (the process manager), ``child`` (what runs
after fork), ``ipc`` (the messages on each child's channel), ``sockets`` (one
SO_REUSEPORT socket per worker slot), ``reload`` (what a HUP may change),
``metrics_store`` (the worker's metric store over shared memory).

Nothing here imports an event loop at module level: the supervisor process never runs
one; children import the runtime after fork.
"""
