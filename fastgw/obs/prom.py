"""Prometheus text exposition (format 0.0.4) of summed metric cells (L4).

The control process renders ``/metrics`` from ``Region.metrics.snapshot()`` (every
worker's area plus the retired area, summed at scrape time); a single process can render
a ``LocalStore`` snapshot the same way.  Two input shapes are accepted for histograms:

- structured: ``name{labels}`` -> an object with ``sum`` and ``buckets`` (per-bucket
  counts, the last one +Inf), as ``fastgw.shm.metrics.HistogramValue``;
- flat (``obs.metrics.LocalStore``): ``name_bucket{labels,le="b"}`` per-bucket counts
  and ``name_sum{labels}``; a ``name_count{labels}`` input is accepted but not needed
  (the hot path no longer writes it: ``_count`` is rendered as the sum of the buckets).

Rules kept here, so that ``promtool check metrics`` accepts the output:

1. One ``# HELP`` and one ``# TYPE`` line per family, from ``obs.metrics.METRICS`` (plus
   ``EXTRA_METRICS``: series the shared-memory store, the supervisor and the control
   process add); a series of an unknown family is rendered ``untyped`` with a generic help.
2. Histogram buckets are cumulated here (cells hold per-bucket counts), ``le`` ascending,
   ``+Inf`` last and equal to ``_count``.
3. Families and series are sorted, so two scrapes of the same state are byte-identical.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from fastgw.obs.metrics import DURATION_BUCKETS, METRICS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name -> (type, help, label names): families that are not the workers' own registry
EXTRA_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "fastgw_workers": (
        "gauge", "Worker processes by state (booting, ready, draining).", ("state",)),
    "fastgw_workers_desired": (
        "gauge", "Worker processes the supervisor keeps running (--workers, TTIN/TTOU).", ()),
    "fastgw_config_generation": (
        "gauge", "Config generation the supervisor last validated (0 = the start-up config).", ()),
    "fastgw_config_apply_failures_total": (
        "counter", "Validated configs a worker could not build (the worker is replaced).", ()),
    "fastgw_proxy_protocol_rejected_total": (
        "counter", "Connections from trusted sources closed for a missing or invalid PROXY header.", ()),
    "fastgw_metrics_overflow_total": (
        "counter", "Increments of series that did not fit in a shared-memory metric area.", ()),
    "fastgw_upstream_instance_healthy": (
        "gauge", "Active health check verdict per instance (1 healthy, 0 unhealthy, -1 unknown).",
        ("service", "instance")),
    "fastgw_upstream_instance_ejected": (
        "gauge", "1 while the instance is ejected by outlier detection.", ("service", "instance")),
    "fastgw_upstream_instance_ejections_total": (
        "counter", "Outlier ejections of the instance.", ("service", "instance")),
    "fastgw_upstream_instance_failures_total": (
        "counter", "Failures real requests saw on the instance, by kind (connect, reset, timeout, status_5xx).",
        ("service", "instance", "kind")),
    "fastgw_circuit_breaker_state": (
        "gauge", "Circuit-breaker state per service with a breaker (0 closed, 1 open, 2 half-open).", ("service",)),
    "fastgw_upstream_in_flight": (
        "gauge", "Attempts in flight on the instance, over every worker (published on the worker tick).",
        ("service", "instance")),
    "fastgw_health_checks_total": (
        "counter", "Active health probes sent by this gateway host.", ()),
    "fastgw_metrics_dropped_series_total": (
        "counter", "Series refused because a shared-memory metric area was full.", ()),
}

_LE = re.compile(r'(?:^|,)le="([^"]*)"$')


def families() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Every documented family: ``METRICS`` then ``EXTRA_METRICS``."""
    out = dict(METRICS)
    out.update(EXTRA_METRICS)
    return out


def bounds_of(name: str) -> tuple[float, ...]:
    """Upper bounds (without +Inf) of histogram ``name``."""
    return DURATION_BUCKETS


def _split(key: str) -> tuple[str, str]:
    """``name{a="1"}`` -> (``name``, ``a="1"``)."""
    i = key.find("{")
    if i < 0:
        return key, ""
    return key[:i], key[i + 1:-1] if key.endswith("}") else key[i + 1:]


def _fmt(v) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _fmt_le(b: float) -> str:
    return repr(float(b))


def _esc_help(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def _with(labels: str, extra: str) -> str:
    return "{" + (labels + "," + extra if labels else extra) + "}"


def _series(name: str, labels: str) -> str:
    return name + ("{" + labels + "}" if labels else "")


class _Hist:
    __slots__ = ("sum", "buckets", "bounds")

    def __init__(self, s: float, buckets, bounds) -> None:
        self.sum = s
        self.buckets = list(buckets)
        self.bounds = bounds


def _collect(snapshot: Mapping[str, object], table) -> tuple[dict, dict]:
    """Scalars by family and histograms by family, each {labels: value}."""
    scalars: dict[str, dict[str, object]] = {}
    hists: dict[str, dict[str, _Hist]] = {}
    flat: dict[tuple[str, str], dict] = {}
    for key, value in snapshot.items():
        name, labels = _split(key)
        if hasattr(value, "buckets"):
            bounds = bounds_of(name)
            b = list(value.buckets)
            if len(b) != len(bounds) + 1:
                bounds = ()
                b = [sum(b)]
            hists.setdefault(name, {})[labels] = _Hist(float(value.sum), b, bounds)
            continue
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[:-len(suffix)]
            if name.endswith(suffix) and table.get(base, ("",))[0] == "histogram":
                if suffix == "_bucket":
                    m = _LE.search(labels)
                    if m is None:
                        break
                    labels, le = labels[:m.start()], m.group(1)
                    flat.setdefault((base, labels), {}).setdefault("b", {})[le] = value
                else:
                    flat.setdefault((base, labels), {})[suffix] = value
                break
        else:
            scalars.setdefault(name, {})[labels] = value
    for (base, labels), parts in flat.items():
        per_le = parts.get("b", {})
        bounds = bounds_of(base)
        want = [_fmt_le(b) for b in bounds]
        les = {k: v for k, v in per_le.items()}
        if sorted(k for k in les if k != "+Inf") == sorted(want):
            b = [les[k] for k in want] + [les.get("+Inf", 0)]
        else:
            bounds = ()
            b = [sum(les.values())]
        hists.setdefault(base, {})[labels] = _Hist(float(parts.get("_sum", 0.0)), b, bounds)
    return scalars, hists


def render(snapshot: Mapping[str, object], extra: Iterable[tuple[str, object]] = ()) -> str:
    """The exposition text of ``snapshot`` plus ``extra`` (key, value) series."""
    table = families()
    merged = dict(snapshot)
    for k, v in extra:
        merged[k] = v
    scalars, hists = _collect(merged, table)
    out: list[str] = []
    for name in sorted(set(scalars) | set(hists)):
        kind, help_, _labels = table.get(name, ("untyped", f"{name} (no description).", ()))
        if name in hists and kind != "histogram":
            kind = "histogram"
        out.append(f"# HELP {name} {_esc_help(help_)}")
        out.append(f"# TYPE {name} {kind}")
        if name in hists:
            for labels in sorted(hists[name]):
                h = hists[name][labels]
                cum = 0
                for bound, n in zip(h.bounds, h.buckets[:len(h.bounds)], strict=True):
                    cum += n
                    out.append(f'{name}_bucket{_with(labels, "le=" + chr(34) + _fmt_le(bound) + chr(34))} {cum}')
                cum += h.buckets[-1] if len(h.buckets) > len(h.bounds) else 0
                out.append(f'{name}_bucket{_with(labels, "le=" + chr(34) + "+Inf" + chr(34))} {cum}')
                out.append(f"{_series(name + '_sum', labels)} {_fmt(h.sum)}")
                out.append(f"{_series(name + '_count', labels)} {cum}")
        for labels in sorted(scalars.get(name, {})):
            out.append(f"{_series(name, labels)} {_fmt(scalars[name][labels])}")
    return "\n".join(out) + "\n"


def reference_markdown() -> str:
    """The metrics reference table of docs/operations.md (kept in sync by a test)."""
    rows = ["| name | type | labels | meaning |", "|---|---|---|---|"]
    for name, (kind, help_, labels) in sorted(families().items()):
        lab = ", ".join(f"`{x}`" for x in labels) or "-"
        rows.append(f"| `{name}` | {kind} | {lab} | {help_} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(reference_markdown())
