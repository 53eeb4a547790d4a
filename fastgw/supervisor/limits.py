"""Open-file limits (L8): make room for a connection storm before the first fork.

Every client connection and every upstream connection is a file descriptor, and
``RLIMIT_NOFILE`` is per process: each worker needs room for ``gateway.max_connections``
client connections, the upstream pools it may open, and a small reserve (listening
sockets, its channel, log files, JWKS and Redis connections).  The usual soft limit (1024)
is far below a worker sized for thousands of connections, so the supervisor raises its
soft limit to that need, within the hard limit, before forking: the children inherit it.

When the hard limit is too low the gateway still starts (with what it can get) and says
so, at start and in ``fastgw --check``, naming the numbers to change.  The system-wide
``fs.file-max`` is compared with the need of all workers together.

Rule: a pure ``plan`` (what is needed, from the config) and one function that acts on it;
only the supervisor calls ``raise_nofile``.
"""

from __future__ import annotations

import resource

RESERVE = 64  # per process, beside connections: listeners, channel, logs, JWKS/Redis, DNS


def pool_connections(cfg) -> int:
    """The most upstream connections one worker may hold: ``pool.max_connections`` of
    every distinct pool (services sharing a pool identity and sizing share one)."""
    from fastgw.upstream.peer import peer_key

    seen = {}
    for svc in cfg.services.values():
        urls = [svc.url] if svc.url else [i.url for i in svc.instances if i.weight > 0]
        for url in urls:
            seen[(peer_key(url, svc.tls), svc.pool, float(svc.connect_timeout))] = svc.pool.max_connections
    return sum(seen.values())


def per_worker(cfg) -> int:
    """Open files one worker may need: client connections + upstream pools + reserve."""
    return int(cfg.gateway.max_connections) + pool_connections(cfg) + RESERVE


def _file_max() -> int | None:
    try:
        with open("/proc/sys/fs/file-max") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _explain(cfg, need: int) -> str:
    return (f"gateway.max_connections ({cfg.gateway.max_connections}) + upstream pools "
            f"({pool_connections(cfg)}) + {RESERVE} reserved = {need} open files per worker")


def warnings(cfg, workers: int, *, soft: int | None = None, hard: int | None = None) -> list[str]:
    """What cannot fit, as operator-facing lines (empty when everything fits)."""
    need = per_worker(cfg)
    if soft is None or hard is None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out = []
    if hard != resource.RLIM_INFINITY and hard < need:
        out.append(f"open files: {_explain(cfg, need)}, but the hard limit is {hard}: raise it "
                   f"(systemd LimitNOFILE=, ulimit -Hn) or lower gateway.max_connections or pool.max_connections; "
                   f"past {max(0, hard - RESERVE - pool_connections(cfg))} client connections a worker "
                   f"fails with 'too many open files'")
    fmax = _file_max()
    if fmax is not None and need * workers > fmax:
        out.append(f"open files: {workers} workers x {need} = {need * workers} exceeds fs.file-max ({fmax})")
    return out


def raise_nofile(cfg, workers: int) -> tuple[int, list[str]]:
    """Raise the soft ``RLIMIT_NOFILE`` to the need (never lower it, never past the hard
    limit); returns the soft limit now in effect and the warnings."""
    need = per_worker(cfg)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, warnings(cfg, workers, soft=soft, hard=hard)
