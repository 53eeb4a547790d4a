"""``python -m bench --docs`` records a run in docs/bench.md between its markers, and only there."""

from __future__ import annotations

from bench import report


def test_record_replaces_only_the_marked_part(tmp_path):
    f = tmp_path / "bench.md"
    f.write_text(f"# Bench\n\nintro 1\n\n{report.DOCS_START}\nold figures\n{report.DOCS_END}\n\nafter\n")
    report.record("# fastgw bench, 2026-12-06\n\n- Machine: m\n\n| a | b |\n", f)
    assert f.read_text() == f"# Bench\n\nintro 1\n\n{report.DOCS_START}\n- Machine: m\n\n| a | b |\n{report.DOCS_END}\n\nafter\n"


def test_the_committed_docs_have_the_markers_once():
    text = report.DOCS.read_text()
    assert text.count(report.DOCS_START) == 1 and text.count(report.DOCS_END) == 1
    assert text.index(report.DOCS_START) < text.index(report.DOCS_END)
