"""Schema of ``monitoring.tracing``: W3C Trace Context and OTLP span export (L1).

The section's presence turns tracing on (``fastgw/middleware/tracing.py``).  These three
names are a contract (tooling outside the repo writes them): ``sample_ratio``,
``otlp_endpoint``, ``service_name``.  The others tune the exporter.

Rules kept here: ``sample_ratio`` is in [0, 1]; ``otlp_endpoint`` is an http(s) URL and
needs the ``opentelemetry-proto`` package (``pip install 'fastgw[otlp]'``), checked at
load time so a gateway never starts with an exporter it cannot run.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated

import msgspec

from fastgw.config import validators as v
from fastgw.config.base import Base, Check, Duration, PositiveDuration


class TracingConfig(Base):
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.01  # new traces recorded
    otlp_endpoint: Annotated[str, Check(v.http_url)] | None = None   # None: ids only, no export
    service_name: Annotated[str, Check(v.non_empty)] = "fastgw"
    export_interval: PositiveDuration = Duration(1)   # a worker sends its queued spans this often
    export_timeout: PositiveDuration = Duration(5)    # one OTLP POST, connect included
    max_queue: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096   # spans waiting per worker
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 512        # spans per POST

    def _check(self):
        if self.otlp_endpoint is None:
            return
        try:
            found = importlib.util.find_spec("opentelemetry.proto") is not None
        except ModuleNotFoundError:  # (no opentelemetry namespace package at all)
            found = False
        if not found:
            yield ("otlp_endpoint", "OTLP export needs the opentelemetry-proto package: pip install 'fastgw[otlp]'")
