"""The instruction-count baseline: keyed by interpreter build, a regression beyond the
tolerance is a missed target, a build without a baseline is reported, not failed."""

from __future__ import annotations

from bench.micro import baseline
from bench.micro.instructions import DEFAULT_ROUTES

INFO = {"implementation": "CPython", "version": "3.11.7", "pgo": "yes", "lto": "no"}


def test_the_key_names_the_build():
    assert baseline.build_key(INFO) == "CPython 3.11.7, PGO yes, LTO no"
    assert baseline.build_key(dict(INFO, pgo="no")) != baseline.build_key(INFO)


def test_the_committed_file_covers_the_default_routes_with_a_stated_tolerance():
    doc = baseline.load()
    assert 0 < doc["tolerance"] <= 0.05
    assert doc["builds"], "no build has a baseline"
    for counts in doc["builds"].values():
        assert set(DEFAULT_ROUTES) <= set(counts)


def test_verdicts():
    key = baseline.build_key(INFO)
    doc = {"tolerance": 0.02, "builds": {key: {"bare": 100_000}}}
    assert baseline.verdict("bare", 101_900, doc, key) == ("baseline 100,000 (+1.9%; target at most +2%): met", False)
    line, missed = baseline.verdict("bare", 102_100, doc, key)
    assert missed and "MISSED" in line
    assert baseline.verdict("bare", 90_000, doc, key)[1] is False
    assert baseline.verdict("bare", 200_000, doc, baseline.build_key(dict(INFO, lto="yes"))) == \
        ("no baseline for this build", False)


def test_update_records_this_build_only(tmp_path):
    f = tmp_path / "b.json"
    baseline.update({"bare": 1234.4}, "A", f)
    baseline.update({"bare": 99.6, "wrk": 5}, "B", f)
    doc = baseline.load(f)
    assert doc["builds"] == {"A": {"bare": 1234}, "B": {"bare": 100, "wrk": 5}}
    assert doc["tolerance"] == baseline.DEFAULT_TOLERANCE
