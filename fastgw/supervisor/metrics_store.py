"""The worker's metric store over its shared-memory area (L8 glue, used after fork).

``obs.metrics.Metrics`` talks to a *store*: ``cell(key) -> int``, ``add(i, v)``,
``set(i, v)``, ``snapshot()``, with one flat key per cell (histograms as
``name_bucket{...,le="b"}``, ``name_sum``, ``name_count``).  ``shm.metrics`` stores typed
series instead: counters (unsigned cells), gauges (signed cells) and histograms (a float
sum and B per-bucket counts; ``_count`` is their sum, so it is never stored).
``ShmStore`` maps one onto the other, so the registry and its hot path stay unchanged:

- a key's kind comes from ``METRICS`` (``histogram`` families become one shm histogram
  per label set, its bucket given by the ``le`` label); an undocumented family is a
  counter if its name ends in ``_total``, else a gauge;
- ``cell()`` returns the shm cell number itself, so ``add`` is one memory write: integer
  cells (counters, gauges, buckets) through the area's signed view (a counter is never
  negative, so its bytes are the same as through the unsigned view the scrape reads),
  histogram sums through the float view, encoded as ``~cell`` (negative);
- ``_count`` cells go to the area's scratch cell, which is never reported: the scrape
  derives ``_count`` from the buckets.

It also keeps the worker slot's ``requests`` cell (``/admin/workers``) up to date from the
``fastgw_http_requests_total`` cells, once per tick (``publish``), not per request.
"""

from __future__ import annotations

from fastgw.obs.metrics import DURATION_BUCKETS, METRICS
from fastgw.shm.metrics import GAUGE_SCRATCH

_LE_INDEX = {repr(b): i for i, b in enumerate(DURATION_BUCKETS)}
_LE_INDEX["+Inf"] = len(DURATION_BUCKETS)
N_BUCKETS = len(DURATION_BUCKETS) + 1
_REQUESTS = "fastgw_http_requests_total"


def _split(key: str) -> tuple[str, str]:
    i = key.find("{")
    return (key, "") if i < 0 else (key[:i], key[i + 1:-1])


def _join(name: str, labels: str) -> str:
    return f"{name}{{{labels}}}" if labels else name


class ShmStore:
    """A ``Metrics`` store writing a ``shm.metrics.MetricsWriter`` area (one writer: us)."""

    __slots__ = ("w", "keys", "_iv", "_fv", "_req_cells", "_published", "ints", "floats")

    def __init__(self, writer) -> None:
        self.w = writer
        self.keys: dict[str, int] = {}
        self._iv = writer.i
        self._fv = writer.f
        # the hot path writes these arrays directly (obs.metrics): ints[cell(k)] += 1,
        # floats[fcell(k)] += seconds
        self.ints = writer.i
        self.floats = writer.f
        self._req_cells: list[int] = []
        self._published = 0

    # the store API of obs.metrics ---------------------------------------------
    def cell(self, key: str) -> int:
        i = self.keys.get(key)
        if i is None:
            i = self.keys[key] = self._locate(key)
        return i

    def fcell(self, key: str) -> int:
        """The float cell of a histogram ``_sum`` key, as an index into ``floats``."""
        i = self.cell(key)
        if i >= 0:
            raise ValueError(f"{key} is not a float cell")
        return ~i

    def add(self, i: int, v=1) -> None:
        if i >= 0:
            try:
                self._iv[i] += v
            except TypeError:           # a float added to an integer cell
                self._iv[i] += int(v)
        else:
            self._fv[~i] += v

    def set(self, i: int, v) -> None:
        if i >= 0:
            self._iv[i] = int(v)
        else:
            self._fv[~i] = float(v)

    def snapshot(self) -> dict[str, float]:
        """This worker's own values by flat key (tests; the scrape reads shm directly)."""
        return {k: (self._iv[i] if i >= 0 else self._fv[~i]) for k, i in self.keys.items()}

    # ------------------------------------------------------------------------------
    def _locate(self, key: str) -> int:
        w = self.w
        name, labels = _split(key)
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                base = name[:-len(suffix)]
                if METRICS.get(base, ("",))[0] == "histogram":
                    return self._hist_cell(base, labels, suffix)
        kind = METRICS.get(name, ("counter" if name.endswith("_total") else "gauge",))[0]
        if kind == "counter":
            c = w.counter(key)
            if name == _REQUESTS:
                self._req_cells.append(c)
            return c
        return w.gauge(key)

    def _hist_cell(self, base: str, labels: str, suffix: str) -> int:
        if suffix == "_count":
            return GAUGE_SCRATCH
        if suffix == "_sum":
            return ~self.w.histogram(_join(base, labels), N_BUCKETS)
        # the le label is the last one (obs.metrics appends it)
        j = labels.rfind('le="')
        le = labels[j + 4:-1] if j >= 0 else "+Inf"
        rest = labels[:j].rstrip(",") if j >= 0 else labels
        first = self.w.histogram(_join(base, rest), N_BUCKETS)
        return first + 1 + _LE_INDEX.get(le, N_BUCKETS - 1)

    # once per tick ------------------------------------------------------------------
    def requests_served(self) -> int:
        iv = self._iv
        return sum(iv[c] for c in self._req_cells)

    def publish(self, slot) -> None:
        """Add the requests answered since the last call to the worker slot's counter."""
        total = self.requests_served()
        if total != self._published:
            slot.served(total - self._published)
            self._published = total
