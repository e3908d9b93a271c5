"""Figures of time courses.

Populations and predicted trajectories in a 2-D view (the first two principal components of all
cells), and W1 per left-out time. matplotlib is imported lazily.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from otcfm.data.timeseries import TimeSeries
from otcfm.plots import _plt, _save

PRED_COLOR, HELD_COLOR, PATH_COLOR = "#d62728", "#000000", "#7f7f7f"


@dataclass(frozen=True)
class View2D:
    """Projection onto the first two principal axes of a reference cloud."""

    mean: Tensor
    axes: Tensor  # (2, d)

    @classmethod
    def fit(cls, x: Tensor) -> View2D:
        """The view of the first two principal components of ``x`` (n, d)."""
        x = x.detach().double()
        mean = x.mean(0)
        if x.shape[1] == 1:
            return cls(mean, torch.tensor([[1.0], [0.0]], dtype=torch.float64))
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        return cls(mean, vh[:2])

    @classmethod
    def first_two(cls, d: int) -> View2D:
        """The first two coordinates as they are (data already in principal components)."""
        axes = torch.eye(max(d, 2), dtype=torch.float64)[:2, :d]
        return cls(torch.zeros(d, dtype=torch.float64), axes)

    def __call__(self, x: Tensor) -> Tensor:
        """Project points (..., d) to the view's plane, (..., 2) float32."""
        flat = x.detach().double().reshape(-1, x.shape[-1])
        out = (flat - self.mean) @ self.axes.T
        return out.reshape(*x.shape[:-1], 2).float()


@dataclass(frozen=True)
class Panel:
    """One model's picture: paths (T, n, d) from ``trajectories`` and a predicted population."""

    title: str
    paths: Tensor | None = None
    predicted: Tensor | None = None


def plot_time_course(
    ts: TimeSeries,
    panels: Sequence[Panel],
    path: str | Path,
    *,
    left_out: int | None = None,
    title: str = "",
    max_points: int = 1500,
    view: View2D | None = None,
) -> Path:
    """Draw populations, cell paths and predicted populations of a time course.

    Observed populations coloured by time, the held-out one in black, each panel's cell
    paths (grey) and predicted population (red), in ``view`` (default: the plane of the
    first two principal components of every cell).
    """
    plt = _plt()
    view = View2D.fit(ts.x) if view is None else view
    panels = list(panels) or [Panel("populations")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    g = torch.Generator().manual_seed(0)
    for ax, panel in zip(axes[0], panels, strict=True):
        for k in range(ts.n_times):
            pop = ts.at(k)
            if pop.shape[0] > max_points:
                pop = pop[torch.randperm(pop.shape[0], generator=g)[:max_points]]
            p = view(pop)
            held = k == left_out
            ax.scatter(
                p[:, 0], p[:, 1], s=3, linewidths=0,
                c=HELD_COLOR if held else [cmap(k / max(1, ts.n_times - 1))],
                alpha=0.45,
                label=f"t={ts.time_names[k]}" + (" (held out)" if held else ""),
            )
        if panel.paths is not None:
            xy = view(panel.paths)  # (T, n, 2)
            ax.plot(xy[:, :, 0], xy[:, :, 1], color=PATH_COLOR, linewidth=0.5, alpha=0.4)
        if panel.predicted is not None:
            q = view(panel.predicted[:max_points])
            ax.scatter(q[:, 0], q[:, 1], s=2, c=PRED_COLOR, linewidths=0, alpha=0.5,
                       label="predicted")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("PC 1", fontsize=8)
        ax.set_ylabel("PC 2", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(loc="best", fontsize=6, markerscale=3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_w1_per_time(
    table: Mapping[str, Mapping[int, Sequence[float]]],
    path: str | Path,
    *,
    time_names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Grouped bars: mean W1 (error bar: std over seeds) per left-out time and method.

    table[method][left_out] = [w1 per seed].
    """
    plt = _plt()
    methods = list(table)
    times = sorted({k for m in methods for k in table[m]})
    ncol = min(4, max(1, len(methods)))  # legend columns; rows above the bars
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 + 1.4 * len(times) * len(methods) / 3),
                                    3.6 + 0.25 * math.ceil(len(methods) / ncol)))
    width = 0.8 / max(1, len(methods))
    # distinct colours for up to 20 methods (the default cycle repeats after 10)
    colors = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors
    lows: list[float] = []
    highs: list[float] = []
    for i, m in enumerate(methods):
        means, stds = [], []
        for k in times:
            v = torch.tensor(list(table[m].get(k, [float("nan")])), dtype=torch.float64)
            means.append(float(v.mean()))
            stds.append(float(v.std(unbiased=False)) if v.numel() > 1 else 0.0)
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(times))]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=m, color=colors[i % len(colors)])
        lows += [a - b for a, b in zip(means, stds, strict=True)]
        highs += [a + b for a, b in zip(means, stds, strict=True)]
    labels = [time_names[k] if time_names else str(k) for k in times]
    ax.set_xticks(range(len(times)), [f"t={lab}" for lab in labels])
    ax.set_xlabel("left-out time point")
    ax.set_ylabel("W1 to the held-out cells")
    lo, hi = [v for v in lows if v == v], [v for v in highs if v == v]
    if lo and hi:  # zoom in (differences are small next to W1); room for the legend on top
        top = 0.25 + 0.12 * math.ceil(len(methods) / ncol)
        ax.set_ylim(0.9 * min(lo), max(hi) + top * (max(hi) - 0.9 * min(lo)))
    ax.legend(fontsize=7, loc="upper left", ncol=ncol)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
