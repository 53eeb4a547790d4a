"""What a reload (HUP) may change, decided by the supervisor before any child sees it.

Some settings are fixed when the supervisor starts: it binds the listening and admin
sockets, sizes the shared-memory region and forks the workers from them.  A reload that
changes one of them is refused as a whole (the old config keeps running, the error is
logged, ``fastgw_config_reloads_total{result="failed"}`` counts it) rather than half
applied: a restart is the only honest way to apply them.

``check_tls`` loads the listener certificate and each service's client TLS files (CA
file, client certificate) the way the workers will, so a renewed certificate that does
not match its key, or a CA file that does not exist, is refused here instead of in every
worker.
"""

from __future__ import annotations

DEFAULT_TABLE_SLOTS = 65536


def table_slots(cfg) -> int:
    rl = cfg.rate_limit
    return rl.table_slots if rl is not None else DEFAULT_TABLE_SLOTS


# (path, getter, why it needs a restart)
RESTART_ONLY = (
    ("gateway.host", lambda c: c.gateway.host, "the listening sockets are bound at start"),
    ("gateway.port", lambda c: c.gateway.port, "the listening sockets are bound at start"),
    ("gateway.workers", lambda c: c.gateway.workers, "use TTIN/TTOU to change the worker count"),
    ("gateway.tls", lambda c: c.gateway.tls is not None, "turning listener TLS on or off"),
    ("gateway.proxy_protocol.enabled", lambda c: c.gateway.proxy_protocol.enabled,
     "turning PROXY protocol on or off"),
    ("monitoring.metrics_host", lambda c: c.monitoring.metrics_host, "the admin socket is bound at start"),
    ("monitoring.metrics_port", lambda c: c.monitoring.metrics_port, "the admin socket is bound at start"),
    ("rate_limit.table_slots", table_slots, "the shared-memory region is sized at start"),
)


def restart_only_changes(old, new) -> list[str]:
    """One error line per restart-only setting that differs between ``old`` and ``new``."""
    out = []
    for path, get, why in RESTART_ONLY:
        a, b = get(old), get(new)
        if a != b:
            out.append(f"{path}: cannot change on reload ({a!r} -> {b!r}; {why}): restart the gateway")
    return out


def check_tls(cfg) -> list[str]:
    """Errors loading ``gateway.tls`` or a service's client TLS files (empty when all load)."""
    out = check_upstream_tls(cfg)
    tls = cfg.gateway.tls
    if tls is None:
        return out
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as e:             # before OSError: SSLError is one
        return out + [f"gateway.tls: cannot load the certificate and key: {e.reason or e}"]
    except OSError as e:
        return out + [f"gateway.tls: cannot load {e.filename or tls.cert_file}: {e.strerror or e}"]
    return out


def check_upstream_tls(cfg) -> list[str]:
    """Errors building the client TLS context of each ``https://`` service (CA file,
    client certificate), so a reload naming a missing or bad file is refused here rather
    than failing in every worker."""
    import ssl

    from fastgw.upstream.peer import tls_context

    out = []
    for name, svc in cfg.services.items():
        urls = [svc.url] if svc.url else [i.url for i in svc.instances]
        if not any(u.lower().startswith("https://") for u in urls):
            continue
        try:
            tls_context(svc.tls)
        except ssl.SSLError as e:
            out.append(f"services.{name}.tls: cannot load the CA file or client certificate: {e.reason or e}")
        except OSError as e:
            out.append(f"services.{name}.tls: cannot load {e.filename or svc.tls.ca_file}: {e.strerror or e}")
    return out
