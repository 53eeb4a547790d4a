"""An upstream instance's identity and its slot in the health table (L3).

The identity is (service name, instance URL): two services on one host:port keep their
own health (their health paths differ) and their own ejections.  Hashed to a nonzero
63-bit int so every process computes the same key with no coordination.
"""

from __future__ import annotations

import hashlib


def instance_key(service: str, url: str) -> int:
    h = hashlib.blake2b(f"{service}\0{url}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 1) or 1


def instance_url(scheme: str, addr: str, port: int) -> str:
    """The URL (and so the identity) of an instance DNS discovery found."""
    return f"{scheme}://{f'[{addr}]' if ':' in addr else addr}:{port}"


def config_instances(cfg) -> list[tuple[str, str, int]]:
    """(service, url, key) of every configured instance, in file order."""
    out = []
    for sname, svc in cfg.services.items():
        for inst in svc.upstreams():
            out.append((sname, inst.url, instance_key(sname, inst.url)))
    return out


def assign_slots(table, cfg) -> dict[int, int]:
    """Give every configured instance a slot (the supervisor, before the config reaches
    the workers); {key: slot}."""
    keys = [k for _s, _u, k in config_instances(cfg)]
    return table.assign(keys)
