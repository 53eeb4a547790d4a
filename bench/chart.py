"""The PNG chart: throughput, proxy CPU per request and p99 per scenario.

matplotlib is a bench-only extra (``pip install -e .[bench]``); without it the chart is
skipped with a message and everything else is written.  Bars are medians, error bars
min..max over the rounds, on log scales (1 MiB downloads and 100 B answers differ by
orders of magnitude); fastgw's throughput bars carry its ratio to nginx.  Invalid cells
are left empty.
"""

from __future__ import annotations

from pathlib import Path

PANELS = (("rps", "requests/s"), ("cpu_us_per_req", "proxy CPU µs / request"), ("p99_ms", "p99 latency (ms)"))
COLORS = {"direct": "#9e9e9e", "nginx": "#2e7d32", "pyfloor": "#f9a825", "fastgw": "#1565c0"}


def _label_ratios(ax, summary: dict, scenarios: list[str], xs: list[float], meds: list[float]) -> None:
    """Print fastgw's 'x nginx' above its throughput bars."""
    valid = [
        s for s in scenarios
        if summary[s].get("fastgw", {}).get("valid") and summary[s]["fastgw"]["metrics"].get("rps")
    ]
    for x, _med, s in zip(xs, meds, valid, strict=False):
        ratio = summary[s]["fastgw"]["ratios"].get("rps_x_nginx")
        top = summary[s]["fastgw"]["metrics"]["rps"]["max"]  # above the error bar
        if ratio:
            ax.annotate(f"{ratio['median']:.2f}x", (x, top), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=7)


def write(path: Path, summary: dict) -> str | None:
    """Write the chart; returns None, or why it was not written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e .[bench]): no chart"
    scenarios = list(summary)
    configs = [c for c in ("direct", "nginx", "pyfloor", "fastgw") if any(c in summary[s] for s in scenarios)]
    if not scenarios or not configs:
        return "nothing to chart"
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(max(8, 1.3 * len(scenarios) + 3), 10), squeeze=False)
    width = 0.8 / len(configs)
    for ax, (metric, label) in zip(axes[:, 0], PANELS, strict=True):
        for i, config in enumerate(configs):
            xs, meds, lo, hi = [], [], [], []
            for x, s in enumerate(scenarios):
                cell = summary[s].get(config)
                m = cell["metrics"].get(metric) if cell and cell["valid"] else None
                if not m:
                    continue
                xs.append(x + (i - (len(configs) - 1) / 2) * width)
                meds.append(m["median"])
                lo.append(m["median"] - m["min"])
                hi.append(m["max"] - m["median"])
            if xs:
                ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=config, color=COLORS.get(config))
            if metric == "rps" and config == "fastgw":
                _label_ratios(ax, summary, scenarios, xs, meds)
        ax.set_yscale("log")
        ax.set_ylabel(label + " (log)")
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(scenarios, rotation=20, ha="right")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(loc="upper right")
    axes[0, 0].set_title("fastgw bench: medians over rounds, error bars min..max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
