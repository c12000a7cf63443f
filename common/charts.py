"""Bar charts drawn with matplotlib for the HTML reports (object API on an Agg canvas: no pyplot state, so
it is safe in server threads and never opens a window)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_REFERENCE_STYLES = (("#444444", "--"), ("#b22222", ":"), ("#c88c00", "-."))


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]  # one per group


@dataclass(frozen=True)
class Reference:
    """A dashed line: one value across the plot, or one per group (drawn over that group only)."""

    label: str
    values: Sequence[float]


def bar_chart(title: str, groups: Sequence[str], series: Sequence[Series], references: Sequence[Reference] = (),
              y_label: str = "", y_max: float = 1.0) -> bytes:
    """A grouped bar chart as PNG bytes, values printed above the bars."""
    n_groups, n_series = max(1, len(groups)), max(1, len(series))
    # Fixed margins in inches (a constrained layout cost a third more time per chart): the legend on the right,
    # up to three lines of group labels below.
    plot_w, legend_w, height = max(3.2, n_groups * (0.5 * n_series + 0.6)), 2.5, 4.2
    width = 0.8 + plot_w + legend_w
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.7 / width, right=(0.8 + plot_w) / width, bottom=0.85 / height, top=1 - 0.45 / height)
    ax = fig.add_subplot()
    width = 0.8 / n_series
    for s_i, s in enumerate(series):
        xs = [g + (s_i - (n_series - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [float(v) for v in s.values], width * 0.92, label=s.label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    for r_i, ref in enumerate(references):
        colour, style = _REFERENCE_STYLES[r_i % len(_REFERENCE_STYLES)]
        if len(ref.values) == len(groups) and len(set(ref.values)) > 1:
            for g, v in enumerate(ref.values):
                ax.hlines(float(v), g - 0.45, g + 0.45, colors=colour, linestyles=style, linewidth=2,
                          label=ref.label if g == 0 else None)
        elif ref.values:
            ax.axhline(float(ref.values[0]), color=colour, linestyle=style, linewidth=2, label=ref.label)
    ax.set_xticks(range(len(groups)), ["\n".join(textwrap.wrap(g, 18)) or " " for g in groups], fontsize=9)
    ax.set_ylim(0, y_max * 1.08)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
