"""The demo's chart: pool sizes stacked against the fleet total, and each instance's demand."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ._common import require

__all__ = ["Sample", "write_chart"]


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """The fleet at one moment: per instance, in the order of the instances."""

    t: float
    holding: tuple[int, ...]
    """Open connections (closing ones included): what counts against the budget."""
    in_use: tuple[int, ...]
    waiting: tuple[int, ...]
    share: tuple[int, ...]
    limit: tuple[int, ...]
    backends: int
    """The fleet's backends in ``pg_stat_activity`` (heartbeat connections included)."""

    @property
    def demand(self) -> tuple[int, ...]:
        return tuple(u + w for u, w in zip(self.in_use, self.waiting, strict=True))


def write_chart(
    path: Path,
    *,
    samples: Sequence[Sample],
    names: Sequence[str],
    total: int,
    bursts: Sequence[tuple[float, float, int, int]],
    title: str,
) -> Path:
    """Draw the run into a PNG at ``path`` (matplotlib's Agg canvas, no pyplot state)."""
    require("matplotlib", "cli", "the demo chart")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - optional
    from matplotlib.figure import Figure  # noqa: PLC0415 - optional

    t = [s.t for s in samples]
    fig = Figure(figsize=(10, 6.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    colors = [f"C{i % 10}" for i in range(len(names))]
    sizes = [[s.holding[i] for s in samples] for i in range(len(names))]
    top.stackplot(t, sizes, labels=[f"{n} pool size" for n in names], colors=colors, alpha=0.8)
    top.plot(t, [s.backends for s in samples], color="black", lw=1.2, label="fleet backends seen")
    top.axhline(total, color="crimson", ls="--", lw=1.5, label=f"total_max_connections = {total}")
    top.set_ylabel("connections")
    top.set_ylim(0, max([total, *(s.backends for s in samples)]) * 1.25 + 1)
    top.legend(loc="upper left", ncols=3, fontsize="small", frameon=False)
    top.set_title(title)
    for i, name in enumerate(names):
        bottom.plot(
            t, [s.demand[i] for s in samples], color=colors[i], lw=1.2, label=f"{name} demand"
        )
    for start, end, i, _ in bursts:
        bottom.axvspan(start, end, color=colors[i], alpha=0.08, lw=0)
    bottom.set_ylabel("in use + waiting")
    bottom.set_xlabel("seconds (shaded: an instance's burst)")
    most = max((max(s.demand, default=0) for s in samples), default=0)
    bottom.set_ylim(0, most * 1.35 + 1)  # room for the legend above the lines
    bottom.legend(loc="upper left", ncols=4, fontsize="small", frameon=False)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.set_xlim(0, max(t[-1] if t else 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
