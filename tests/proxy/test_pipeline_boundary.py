"""The protocol <-> engine boundary (``pipeline/boundary.py``) matches the real classes:
every member an interface lists exists on the class that offers it, with the same
parameters, and the engine's and the proxy's sources use no member of the protocols that
the interfaces do not list."""

from __future__ import annotations

import inspect
import re
import typing

import pytest

from fastgw.http.protocol import DownstreamProtocol
from fastgw.pipeline import boundary
from fastgw.pipeline.engine import Engine
from fastgw.pipeline.proxy import Proxy
from fastgw.upstream.client import UpstreamProtocol

PAIRS = [(boundary.ClientHandler, Engine), (boundary.ClientSide, DownstreamProtocol),
         (boundary.UpstreamHandler, Proxy), (boundary.UpstreamSide, UpstreamProtocol)]


def _members(iface) -> tuple[set, set]:
    methods = {n for n, v in vars(iface).items() if inspect.isfunction(v) and not n.startswith("_")}
    attrs = set(typing.get_type_hints(iface)) if iface.__annotations__ else set()
    return methods, attrs


@pytest.mark.parametrize("iface,cls", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_interface_members_exist_with_the_same_parameters(iface, cls):
    methods, attrs = _members(iface)
    assert methods, iface
    for name in methods:
        impl = getattr(cls, name, None)
        assert callable(impl), f"{cls.__name__} lacks {name}()"
        want = list(inspect.signature(getattr(iface, name)).parameters)
        got = list(inspect.signature(impl).parameters)
        if got[:1] != ["self"]:  # a staticmethod
            got = ["self"] + got
        assert len(got) == len(want), f"{cls.__name__}.{name}{got} vs {iface.__name__}{want}"
    slots = set(getattr(cls, "__slots__", ()))
    for name in attrs:
        assert name in slots or hasattr(cls, name), f"{cls.__name__} lacks attribute {name}"


@pytest.mark.parametrize("mod,var,iface", [
    ("fastgw/pipeline/engine.py", "proto", boundary.ClientSide),
    ("fastgw/pipeline/proxy.py", "proto", boundary.ClientSide),
    ("fastgw/pipeline/proxy.py", "up", boundary.UpstreamSide),
    ("fastgw/pipeline/proxy.py", "conn", boundary.UpstreamSide),
])
def test_engine_uses_only_what_the_interfaces_list(mod, var, iface):
    import os
    from tests.support import ROOT as root
    src = open(os.path.join(root, mod)).read()
    used = set(re.findall(rf"\b{var}\.(\w+)", src))
    methods, attrs = _members(iface)
    # (the pool's own methods are reached through ``up.pool``/``conn.pool``)
    assert used <= methods | attrs, f"{mod} uses {sorted(used - methods - attrs)} of {var} beyond {iface.__name__}"
