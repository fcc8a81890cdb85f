"""The learning-curve picture of the active-learning benchmarks, drawn with matplotlib.

matplotlib is a benchmark extra (``pip install '.[bench]'``), never an engine dependency:
it is imported inside the function, so the benchmarks' other commands run without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: One colour per strategy, the same in every picture (matplotlib's tab10 entries).
COLORS = {"random": "tab:blue", "disagreement": "tab:red", "entropy": "tab:green",
          "disagreement-supervised": "tab:orange", "first": "tab:gray"}
#: Markers and line styles differ too, so that arms with equal values stay visible on top of each other.
STYLES = {"random": ("o", "-"), "disagreement": ("s", "-"), "entropy": ("^", "--"),
          "disagreement-supervised": ("D", ":")}

#: ``{arm: {labeled cases: [value per seed]}}``
Series = Dict[str, Dict[int, List[float]]]


def learning_curve(path: Path, dice: Series, title: str, ylabel: str = "Dice on the measure cases (%)",
                   effort: Optional[Series] = None, effort_label: str = "correction effort: 1 - Dice (%)",
                   arm_order: Sequence[str] = ()) -> Path:
    """Dice against labeled cases, one line per arm; an arm with several seeds (random) is drawn
    as its mean with the band of mean +- one standard deviation shaded and each seed thin.

    ``effort``: a second panel with the correction effort of each round's picks (same layout),
    plotted at the number of labels the picks brought the arm to.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [(dice, ylabel)] + ([(effort, effort_label)] if effort else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), squeeze=False)
    arms = [a for a in arm_order if a in dice] + sorted(a for a in dice if a not in arm_order)
    for ax, (series, label) in zip(axes[0], panels):
        for arm in arms:
            points = series.get(arm) or {}
            if not points:
                continue
            xs = sorted(points)
            runs = [points[x] for x in xs]
            mean = np.array([np.mean(v) for v in runs])
            color = COLORS.get(arm)
            seeds = max(len(v) for v in runs)
            name = f"{arm} (mean of {seeds} seeds, band +- 1 sd)" if seeds > 1 else arm
            marker, style = STYLES.get(arm, ("o", "-"))
            line, = ax.plot(xs, mean, marker=marker, linestyle=style, color=color, label=name, linewidth=2,
                            markersize=6, alpha=0.9)
            if seeds > 1:
                sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in runs])
                ax.fill_between(xs, mean - sd, mean + sd, color=line.get_color(), alpha=0.18, linewidth=0)
                for seed in range(seeds):
                    own = [(x, v[seed]) for x, v in zip(xs, runs) if len(v) > seed]
                    ax.plot([p[0] for p in own], [p[1] for p in own], color=line.get_color(), linewidth=0.7,
                            alpha=0.5)
        ax.set_xlabel("labeled cases")
        ax.set_ylabel(label)
        ticks = sorted({x for s in series.values() for x in s})
        if ticks:
            ax.set_xticks(ticks)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
