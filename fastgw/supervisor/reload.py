"""Reloads (HUP, ``POST /admin/reload``), decided by the supervisor before any child sees them.

``attempt`` runs one: ``Reloader.prepare`` loads and checks the file, compares it (and the
files it references: ``fingerprint``) with the running config (``fastgw.config.diff``);
errors refuse it, an empty summary makes it a no-op, else a new generation goes out.
Warnings already logged for the running config are not logged again.

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

import logging

from fastgw.config.ratelimit_section import table_slots
from fastgw.obs import oplog
from fastgw.resilience.identity import assign_slots
from fastgw.supervisor import ipc

log = logging.getLogger("fastgw")

def revocation_slots(cfg) -> int:
    a = cfg.auth
    return a.revocation.max_entries if a is not None else 1024


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
    ("monitoring.admin", lambda c: c.monitoring.admin and (c.monitoring.admin.host, c.monitoring.admin.port),
     "the admin API socket is bound at start (its token reloads)"),
    ("rate_limit.table_slots", lambda c: table_slots(c.rate_limit), "the shared-memory region is sized at start"),
    ("gateway.max_upstream_instances", lambda c: c.gateway.max_upstream_instances,
     "the shared-memory region is sized at start"),
    ("auth.revocation.max_entries", revocation_slots, "the shared-memory region is sized at start"),
    ("auth.revocation.backend", lambda c: c.auth is not None and c.auth.revocation.backend,
     "the control process starts the Redis sync at start"),
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


# ---------------------------------------------------------------------- one reload attempt
def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def fingerprint(cfg) -> dict[str, str]:
    """``{field path: digest of the file's content}`` for every file the config names
    (certificates, keys, CA bundles, JWKS and schema files): a renewed certificate is a
    change even when the config file is identical."""
    import hashlib

    from fastgw.config.diff import referenced_files

    out = {}
    for where, name in referenced_files(cfg).items():
        try:
            with open(name, "rb") as f:
                out[where] = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            out[where] = f"unreadable: {e.strerror or e}"
    return out


class Outcome:
    """What ``Reloader.prepare`` found: errors (refused), or the new config, the warnings
    not logged before, and the change summary (empty: nothing to do)."""

    __slots__ = ("cfg", "errors", "warnings", "summary", "files", "all_warnings")

    def __init__(self, cfg=None, errors=(), warnings=(), summary=None, files=None, all_warnings=()) -> None:
        self.cfg = cfg
        self.errors = list(errors)
        self.warnings = list(warnings)
        self.summary = summary
        self.files = files or {}
        self.all_warnings = list(all_warnings)

    def refused_line(self, generation: int) -> str:
        return (f"reload refused ({_plural(len(self.errors), 'error')}): "
                f"still running config generation {generation}")

    def result(self, generation: int, changed: bool) -> dict:
        """The answer of ``POST /admin/reload`` and the audit record's body."""
        if self.errors:
            return {"result": "refused", "generation": generation, "errors": self.errors}
        return {"result": "reloaded" if changed else "unchanged", "generation": generation,
                "changes": self.summary.lines() if self.summary else [], "warnings": self.all_warnings}


class Reloader:
    """The supervisor's memory between reloads: the referenced files' fingerprints and the
    warnings already logged (an unchanged warning is not repeated)."""

    def __init__(self, path: str, cfg, warnings=()) -> None:
        self.path = path
        self.files = fingerprint(cfg)
        self.warned = set(warnings)

    def prepare(self, old) -> Outcome:
        """Load and check the file; nothing is applied here."""
        from fastgw.config import ConfigError, load_config
        from fastgw.config.diff import diff

        try:
            cfg, warnings = load_config(self.path)
        except ConfigError as e:
            return Outcome(errors=e.errors)
        errors = restart_only_changes(old, cfg) or check_tls(cfg) or check_log_output(cfg)
        if errors:
            return Outcome(errors=errors)
        files = fingerprint(cfg)
        summary = diff(old, cfg, self.files, files)
        return Outcome(cfg, (), [w for w in warnings if w not in self.warned], summary, files, warnings)

    def commit(self, out: Outcome) -> None:
        self.files = out.files
        self.warned = set(out.all_warnings)


def check_log_output(cfg) -> list[str]:
    """The operational log file a new config names must open: every process switches to it
    (the access and audit targets do not move on reload, so they are not checked here)."""
    target = cfg.monitoring.logging.output
    if target in ("stdout", "stderr"):
        return []
    import os
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError as e:
        return [f"monitoring.logging.output: cannot open {target}: {e.strerror or e}"]
    return []


def attempt(arb, source: str, client: str = "") -> dict:
    """One reload attempt of the supervisor ``arb`` (HUP: ``source="signal"``; ``POST
    /admin/reload``: ``"admin"``): refused with every error and its path, a no-op when
    nothing changed (referenced files included), else a new generation sent to every
    child.  Logged, counted, audited; returns the outcome document (``Outcome.result``)."""
    if arb.stopping:
        return {"result": "refused", "generation": arb.generation, "errors": ["the gateway is stopping"]}
    w, ok_cell, failed_cell = arb.m[0], arb.m[2], arb.m[3]
    out = arb.reloader.prepare(arb.cfg)
    who = {"source": source, **({"client_ip": client} if client else {})}
    if out.errors:
        for line in out.errors:
            log.error("reload refused: %s", line)
        log.error("%s", out.refused_line(arb.generation))
        w.inc(failed_cell)
        res = out.result(arb.generation, False)
        arb.audit.write("reload", **who, **res)
        return res
    for line in out.warnings:
        log.warning("reload: %s", line)
    changed = bool(out.summary)
    arb.reloader.commit(out)
    w.inc(ok_cell)
    if not changed:
        log.info("reload: no changes (config generation %d)", arb.generation)
    else:
        arb.generation += 1
        assign_slots(arb.region.health, out.cfg)  # instance slots, before any child builds the config
        frame = ipc.encode(ipc.Reload(arb.generation, out.cfg))
        for c in arb.children.values():
            c.chan.send_raw(frame)          # a child still booting reads it once it serves
        arb.cfg = out.cfg
        arb.region.broadcast.set_config_generation(arb.generation)
        try:
            oplog.configure_from(out.cfg)
        except OSError as e:
            log.error("monitoring.logging.output: cannot open %s: %s", e.filename, e.strerror or e)
        log.info("config reloaded: generation %d: %s", arb.generation, out.summary.short())
        for line in out.summary.lines():
            log.info("reload: %s", line)
    res = out.result(arb.generation, changed)
    arb.audit.write("reload", **who, **res)
    return res


def check_upstream_tls(cfg) -> list[str]:
    """Errors building the client TLS context of each ``https://`` service (CA file,
    client certificate), so a reload naming a missing or bad file is refused here rather
    than failing in every worker."""
    import ssl

    from fastgw.upstream.peer import tls_context

    out = []
    for name, svc in cfg.services.items():
        urls = [svc.url] if svc.url else [i.url for i in svc.instances]
        if svc.discovery is not None and svc.discovery.scheme == "https":
            urls = ["https://"]   # discovered instances use the same TLS settings
        if not any(u.lower().startswith("https://") for u in urls):
            continue
        try:
            tls_context(svc.tls)
        except ssl.SSLError as e:
            out.append(f"services.{name}.tls: cannot load the CA file or client certificate: {e.reason or e}")
        except OSError as e:
            out.append(f"services.{name}.tls: cannot load {e.filename or svc.tls.ca_file}: {e.strerror or e}")
    return out
