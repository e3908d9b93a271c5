"""Matplotlib figures: point clouds, flow trajectories, training curves, image grids.

matplotlib is the ``plot`` extra and is imported lazily. Points of more than two dimensions
are shown on their first two coordinates (the axes say so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from otcfm.data.toy import display_name

SOURCE_COLOR, TARGET_COLOR, SAMPLE_COLOR, PATH_COLOR = "#1f77b4", "#d62728", "#2ca02c", "#7f7f7f"


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'otcfm[plot]'") from None
    return plt


def _xy(x: Tensor) -> Tensor:
    """(N, ``*event``) -> (N, 2): the first two coordinates (a zero column for 1-D data)."""
    flat = x.detach().float().cpu().reshape(x.shape[0], -1)
    if flat.shape[1] == 1:
        return torch.cat([flat, torch.zeros_like(flat)], dim=1)
    return flat[:, :2]


def _scatter(ax, x: Tensor, color: str, label: str, size: float = 2.0, alpha: float = 0.5) -> None:
    p = _xy(x)
    ax.scatter(p[:, 0], p[:, 1], s=size, c=color, alpha=alpha, label=label, linewidths=0)


def _limits(*clouds: Tensor, margin: float = 0.05) -> tuple[tuple[float, float], ...]:
    """Common (x, y) axis limits covering every cloud, so panels share one scale."""
    pts = torch.cat([_xy(c) for c in clouds])
    lo, hi = pts.min(0).values, pts.max(0).values
    pad = (hi - lo).clamp_min(1e-6) * margin
    return tuple((float(lo[k] - pad[k]), float(hi[k] + pad[k])) for k in range(2))


def _share(axes, limits) -> None:
    for ax in axes:
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])


def _style(ax, title: str, dim: int) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])
    if dim > 2:
        ax.set_xlabel(f"coordinate 1 (of {dim})", fontsize=8)
        ax.set_ylabel("coordinate 2", fontsize=8)


def draw_trajectories(
    ax, xs: Tensor, target: Tensor | None = None, *, n_paths: int = 300, title: str = ""
) -> None:
    """Draw ``n_paths`` flow lines from xs (T, B, ``*event``): start (blue), path, end (green)."""
    n = min(n_paths, xs.shape[1])
    if target is not None:
        _scatter(ax, target, TARGET_COLOR, "target", size=1.5, alpha=0.25)
    paths = torch.stack([_xy(x[:n]) for x in xs])  # (T, n, 2)
    ax.plot(paths[:, :, 0], paths[:, :, 1], color=PATH_COLOR, alpha=0.25, linewidth=0.5)
    _scatter(ax, xs[0, :n], SOURCE_COLOR, "x(0)", size=3.0, alpha=0.8)
    _scatter(ax, xs[-1, :n], SAMPLE_COLOR, "x(1)", size=3.0, alpha=0.8)
    _style(ax, title, xs[0, 0].numel())


def plot_overview(
    source: Tensor, target: Tensor, samples: Tensor, xs: Tensor, path: str | Path, title: str = ""
) -> Path:
    """One figure with source, target, model samples and trajectories side by side."""
    plt = _plt()
    dim = source[0].numel()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    for ax, x, color, name in (
        (axes[0], source, SOURCE_COLOR, "source x0"),
        (axes[1], target, TARGET_COLOR, "target x1"),
        (axes[2], samples, SAMPLE_COLOR, "samples x(1)"),
    ):
        _scatter(ax, x, color, name)
        _style(ax, name, dim)
    draw_trajectories(axes[3], xs, target, title="trajectories")
    axes[3].legend(loc="lower right", fontsize=7, markerscale=3)
    _share(axes, _limits(source, target, samples))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_trajectory_grid(
    panels: Sequence[tuple[str, Tensor]], target: Tensor | None, path: str | Path, title: str = ""
) -> Path:
    """Trajectories of several models side by side.

    ``panels`` = [(name, xs (T, B, ``*event``)), ...].
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (name, xs) in zip(axes[0], panels, strict=True):
        draw_trajectories(ax, xs, target, title=name)
    axes[0, 0].legend(loc="lower right", fontsize=7, markerscale=3)
    clouds = [xs[k] for _, xs in panels for k in (0, -1)]
    _share(axes[0], _limits(*clouds, *([target] if target is not None else [])))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def run_title(method: str, source: str, target: str) -> str:
    """The title of a run's figures.

    ``"otcfm: moons -> 8gaussians"`` (display names of the data,
    :func:`otcfm.data.toy.display_name`).
    """
    return f"{method}: {display_name(source)} -> {display_name(target)}"


def plot_history(history: Sequence[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Plot a run's training and validation curves against the optimizer step.

    Training loss (every row), validation loss and validation W2 (the rows that hold them)
    against the optimizer step; the rows of a run's log.csv. Points are marked, so a run of
    a single logged row still shows it.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))

    def series(key: str) -> tuple[list[float], list[float]]:
        rows = [r for r in history if r.get(key) is not None and math.isfinite(r[key])]
        return [r["step"] for r in rows], [r[key] for r in rows]

    marker = "o" if len(history) <= 30 else None
    axes[0].plot(*series("loss"), marker=marker, label="train loss")
    steps, val = series("val_loss")
    if steps:
        axes[0].plot(steps, val, marker=marker, label="validation loss")
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].legend()
    steps, w2 = series("val_w2")
    if steps:
        axes[1].plot(steps, w2, marker=marker, color=SAMPLE_COLOR)
    else:
        axes[1].text(0.5, 0.5, "no validation rows", ha="center", va="center",
                     transform=axes[1].transAxes)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation W2")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile images (N, C, H, W) in [-1, 1] into one (C, H', W') image in [0, 1].

    ``nrow`` images per row (default: about sqrt(N)), ``pad`` pixels of white between and around
    them, row-major order; values outside [-1, 1] are clipped.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else images!r}")
    n, c, h, w = images.shape
    nrow = max(1, math.ceil(math.sqrt(n))) if nrow is None else int(nrow)
    if nrow < 1 or pad < 0:
        raise ValueError(f"need nrow >= 1 and pad >= 0, got {nrow}, {pad}")
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    for k in range(n):
        top, left = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        grid[:, top:top + h, left:left + w] = pixels[k]
    return grid


def save_image_grid(
    images: Tensor, path: str | Path, nrow: int | None = None, *, min_size: int = 256
) -> Path:
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid.

    Write images (N, C, H, W) in [-1, 1] as one PNG grid (:func:`image_grid`), each pixel
    repeated (nearest neighbour) an integer number of times so the grid is at least
    ``min_size`` pixels wide: 8x8 digits stay legible. The file is written whole (a
    temporary file renamed into place).
    """
    import os
    import tempfile

    grid = image_grid(images, nrow)
    scale = max(1, math.ceil(min_size / grid.shape[-1]))
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    pixels = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        _plt().imsave(tmp, pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1,
                      format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def plot_image_grids(grids: dict[str, Tensor], path: str | Path, title: str = "") -> Path:
    """Draw image grids side by side, one panel per entry of ``grids``.

    Panels side by side, one per entry of ``grids`` (label -> images (N, C, H, W) in
    [-1, 1], tiled by :func:`image_grid`): e.g. the same noise pushed with 2, 8 and 100 Euler
    steps. Grey images are drawn in grey, RGB in colour.
    """
    if not grids:
        raise ValueError("grids must hold at least one panel")
    plt = _plt()
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.4), squeeze=False)
    for ax, (label, images) in zip(axes[0], grids.items(), strict=True):
        grid = image_grid(images)
        if grid.shape[0] == 1:
            ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path
