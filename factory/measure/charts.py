"""The report's charts, drawn offline: matplotlib figures (no pyplot state, the Agg renderer) as inline SVG
for the page and PNG for the README.

Each chart function takes plain numbers and returns a ``Figure``, or ``None`` when there is nothing to draw
(the page then says what is missing). Intervals are drawn where the numbers have them: error bars on points
and bars, a shaded band along a line. SVG keeps its text as text (``svg.fonttype: none``: the browser's
own sans-serif, nothing fetched) and its ids are prefixed per chart, so many charts share one page.
"""

from __future__ import annotations

import io
import re
from typing import Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure

# (x, y, [lo, hi] or None): a point of a line, with its 95% interval when the metrics have one
Point = tuple[float, float, Sequence[float] | None]

_RC = {"svg.fonttype": "none", "svg.hashsalt": "factory-report", "font.size": 9, "font.family": "sans-serif",
       "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}
REAL, SYNTHETIC, THRESHOLD = "#4c72b0", "#dd8452", "#c44e52"


def figure(width: float = 6.4, height: float = 3.4, ncols: int = 1) -> tuple[Figure, list]:
    """A figure (not registered with pyplot) and its axes."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def to_svg(fig: Figure, prefix: str) -> str:
    """``fig`` as an ``<svg>`` element to inline in HTML, every id prefixed with ``prefix`` (no clash
    between charts), no XML header, no date (the same chart gives the same bytes)."""
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.S)  # RDF names, no use here
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    return re.sub(r'(url\(#|href="#)([^")]+)', lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """``fig`` as PNG bytes (no software or date stamp)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _err(points: Sequence[Point]) -> list[list[float]] | None:
    """Error-bar lengths below and above each point (0 where a point has no interval), or None if none has."""
    if not any(ci for _, _, ci in points):
        return None
    return [[y - ci[0] if ci else 0.0 for _, y, ci in points], [ci[1] - y if ci else 0.0 for _, y, ci in points]]


def histogram(real: Sequence[float], synthetic: Sequence[float], threshold: float | None, *, xlabel: str,
              title: str, real_label: str = "real val", synthetic_label: str = "synthetic (raw)") -> Figure | None:
    """Two overlaid distributions (density) with the threshold as a labelled vertical line."""
    if not real and not synthetic:
        return None
    fig, (ax,) = figure(5.2, 3.0)
    values = list(real) + list(synthetic) + ([threshold] if threshold is not None else [])
    lo, hi = min(values), max(values)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
    for data, label, colour in ((real, real_label, REAL), (synthetic, synthetic_label, SYNTHETIC)):
        if data:
            ax.hist(data, bins=bins, density=True, alpha=0.55, color=colour, label=f"{label} ({len(data)} scores)")
    if threshold is not None:
        ax.axvline(threshold, color=THRESHOLD, linestyle="--", linewidth=1.5, label=f"threshold {threshold:.3f}")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def lines(series: Mapping[str, Sequence[Point]], *, xlabel: str, ylabel: str, title: str,
          percent: bool = True, xticks: Sequence[float] | None = None) -> Figure | None:
    """One line per series with markers and 95% error bars where its points have intervals."""
    series = {k: sorted(v, key=lambda p: p[0]) for k, v in series.items() if v}
    if not series:
        return None
    fig, (ax,) = figure()
    scale = 100.0 if percent else 1.0
    for name, points in series.items():
        err = _err(points)
        ax.errorbar([p[0] for p in points], [scale * p[1] for p in points],
                    yerr=None if err is None else [[scale * e for e in side] for side in err],
                    marker="o", capsize=3, label=name)
    if xticks is not None:
        ax.set_xticks(list(xticks))
    ax.set(xlabel=xlabel, ylabel=ylabel + (" (%)" if percent else ""), title=title)
    ax.legend(fontsize=8)
    return fig


def bars(categories: Sequence[str], series: Mapping[str, Sequence[tuple[float | None, Sequence[float] | None]]], *,
         ylabel: str, title: str, percent: bool = True) -> Figure | None:
    """Grouped bars: for each category one bar per series, with its 95% interval as an error bar."""
    series = {k: v for k, v in series.items() if any(y is not None for y, _ in v)}
    if not categories or not series:
        return None
    fig, (ax,) = figure(min(12.0, max(6.4, 0.25 * len(categories) * len(series))), 3.4)
    scale, width = 100.0 if percent else 1.0, 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(categories))]
        ys = [scale * (y or 0.0) for y, _ in values]
        err = [[scale * (y - ci[0]) if ci and y is not None else 0.0 for y, ci in values],
               [scale * (ci[1] - y) if ci and y is not None else 0.0 for y, ci in values]]
        ax.bar(xs, ys, width=width, label=name, yerr=err if any(map(any, err)) else None, capsize=2)
    ax.set_xticks(range(len(categories)), [c[:14] for c in categories], rotation=45 if len(categories) > 10 else 0)
    low = min((y for v in series.values() for y, _ in v if y is not None), default=0.0)
    if percent:
        ax.set_ylim(max(0.0, scale * low - 10), 100 + 2)
    ax.set(ylabel=ylabel + (" (%)" if percent else ""), title=title)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], *, title: str) -> Figure | None:
    """A confusion matrix (rows: true class, columns: predicted), each cell's count written in it."""
    if not matrix or len(matrix) != len(classes):
        return None
    n = len(classes)
    fig, (ax,) = figure(max(4.0, 0.42 * n + 1.6), max(3.6, 0.42 * n + 1.2))
    ax.grid(False)
    top = max(max(r) for r in matrix) or 1
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
    names = [c[:12] for c in classes]
    ax.set_xticks(range(n), names, rotation=90 if max(map(len, names)) > 2 else 0)
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return fig


def curves(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float],
                                                     Sequence[float]]]], *, title: str) -> Figure | None:
    """Training curves: one panel per metric (``{"train loss": {pool: (steps, mean, low, high)}}``), a line
    per pool with the band between the lowest and highest seed."""
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return None
    fig, axes = figure(4.2 * len(panels), 3.4, ncols=len(panels))
    for ax, (metric, runs) in zip(axes, panels.items()):
        for name, (steps, mean, low, high) in runs.items():
            (line,) = ax.plot(steps, mean, label=name, linewidth=1.2)
            if any(a != b for a, b in zip(low, high)):
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set(xlabel="step", title=metric)
    axes[-1].legend(fontsize=7)
    fig.suptitle(title)
    return fig
