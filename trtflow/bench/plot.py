"""PNG plots of a bench report: stage bars per configuration, and one pipelined window as a timeline."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from trtflow.artifact import atomic_write


def plot_report(report: Any, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.results
    fig, axes = plt.subplots(1, 2 if report.timeline else 1, figsize=(14 if report.timeline else 8, 5), squeeze=False)
    ax = axes[0][0]
    labels = [r.label for r in results]
    left = [0.0] * len(results)
    for stage, color in (("h2d", "#4C72B0"), ("compute", "#55A868"), ("d2h", "#C44E52")):
        vals = [getattr(r, stage).mean if getattr(r, stage) is not None else 0.0 for r in results]
        ax.barh(labels, vals, left=left, color=color, label=stage)
        left = [a + b for a, b in zip(left, vals)]
    ax.scatter([r.wall.p50 for r in results], labels, color="black", marker="|", s=300, label="wall p50", zorder=3)
    ax.invert_yaxis()
    ax.set_xlabel("ms per request (CUDA events; | = wall clock as the caller sees it)")
    ax.set_title(f"{report.name} on {report.card}")
    ax.legend(loc="lower right")
    if report.timeline:
        ax2 = axes[0][1]
        colors = {"h2d": "#4C72B0", "compute": "#55A868", "d2h": "#C44E52"}
        for row in report.timeline:
            ax2.barh(f"request {row['request']}", row["end_ms"] - row["start_ms"], left=row["start_ms"],
                     color=colors[row["stage"]])
        ax2.invert_yaxis()
        ax2.set_xlabel("ms since the first H2D")
        ax2.set_title("one pipelined window: copies overlap compute")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write(out, png.getvalue())
