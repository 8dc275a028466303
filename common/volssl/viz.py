"""PNG figures: learning curves and slice overlays (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_embeddings", "plot_learning_curves", "plot_overlay"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(rows: Sequence[dict], path) -> Path:
    """Plot every column of ``rows`` (dicts with an ``epoch`` key) against the epoch: losses on the left, validation
    metrics next, embedding-probe diagnostics (``probe_*`` columns, :class:`volssl.engines.EmbeddingProbe`) last.
    Returns the PNG path."""
    plt = _pyplot()
    path = Path(path)
    epochs = [r["epoch"] for r in rows]
    train = sorted({k for r in rows for k in r if k.startswith("train_")})
    val = sorted({k for r in rows for k in r if k.startswith("val_")})
    probe = sorted({k for r in rows for k in r if k.startswith("probe_")})
    panels = 1 + bool(val) + bool(probe)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    for key in train:
        axes[0, 0].plot(epochs, [r.get(key, np.nan) for r in rows], label=key[len("train_") :])
    axes[0, 0].set(xlabel="epoch", ylabel="training loss", title="training")
    if train:  # a row written before the first epoch (e.g. a probe at epoch 0) has no loss yet
        axes[0, 0].legend(fontsize=8)
    if val:
        for key in val:
            axes[0, 1].plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", label=key[len("val_") :])
        axes[0, 1].set(xlabel="epoch", ylabel="metric", title="validation")
        axes[0, 1].legend(fontsize=8)
    if probe:
        ax = axes[0, -1]
        for key in probe:
            # the probe runs every few epochs: plot only the epochs that have a value
            points = [(r["epoch"], r[key]) for r in rows if key in r and r[key] == r[key]]
            if points:
                ax.plot(*zip(*points), marker=".", label=key[len("probe_") :])
        ax.set(xlabel="epoch", ylabel="value", title="embedding probe")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_overlay(
    image: np.ndarray,
    label: np.ndarray | None,
    pred: np.ndarray | None,
    path,
    slice_axis: int = -1,
    num_slices: int = 4,
    title: str = "",
    class_names: Mapping[int, str] | None = None,
) -> Path:
    """Write a PNG with ``num_slices`` evenly spaced slices of a 3D ``image``, one column per slice: a row with the
    ground-truth ``label`` (if given) and a row with the prediction ``pred``, each class as a coloured overlay, and a
    legend of the class colours (``class_names``: index -> name; default "class <i>"). Arrays are (x, y, z)."""
    plt = _pyplot()
    path = Path(path)
    axis = slice_axis % 3
    depth = image.shape[axis]
    picks = np.unique(np.linspace(0, depth - 1, num_slices + 2).round().astype(int)[1:-1]) if depth > 2 else [0]
    rows = [("ground truth", label), ("prediction", pred)]
    rows = [(name, arr) for name, arr in rows if arr is not None]
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(2.6 * len(picks), 2.6 * len(rows)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for r, (name, arr) in enumerate(rows):
        for c, idx in enumerate(picks):
            ax = axes[r, c]
            img2d = np.take(image, idx, axis=axis).T
            ax.imshow(img2d, cmap="gray", origin="lower")
            seg = np.take(arr, idx, axis=axis).T.astype(int)
            rgba = np.zeros(seg.shape + (4,))
            for k in np.unique(seg[seg > 0]):
                rgba[seg == k] = (*cmap(int(k) % 10)[:3], 0.45)
            ax.imshow(rgba, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, slice {idx + 1}/{depth}", fontsize=8)
    present = sorted({int(k) for _, arr in rows for k in np.unique(arr) if k > 0})
    names = {int(k): str(v) for k, v in (class_names or {}).items()}
    if present:
        from matplotlib.patches import Patch

        handles = [Patch(color=cmap(k % 10)[:3], alpha=0.6, label=names.get(k, f"class {k}")) for k in present]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if present else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_embeddings(
    points: np.ndarray,
    positions: np.ndarray,
    volumes: np.ndarray,
    path,
    title: str = "",
    xlabel: str = "PC 1",
    ylabel: str = "PC 2",
) -> Path:
    """Scatter 2D projections of slice embeddings coloured by slice position, with one thin line per volume joining
    its slices in position order (a well-organised embedding shows parallel lines with the same colour gradient).

    Args:
        points: (N, 2) projected embeddings (e.g. :func:`volssl.metrics.embeddings.project_2d`).
        positions: (N,) normalised slice positions (the colour).
        volumes: (N,) volume ids (one line per id).
        path: the PNG to write.
        title: figure title.
        xlabel, ylabel: axis labels.

    Returns:
        the PNG path.
    """
    plt = _pyplot()
    path = Path(path)
    points = np.asarray(points, dtype=float)
    positions = np.asarray(positions, dtype=float).reshape(-1)
    volumes = np.asarray(volumes).reshape(-1)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for vol in dict.fromkeys(volumes.tolist()):
        idx = np.flatnonzero(volumes == vol)
        idx = idx[np.argsort(positions[idx], kind="stable")]
        ax.plot(points[idx, 0], points[idx, 1], color="0.6", linewidth=0.6, zorder=1)
    sc = ax.scatter(points[:, 0], points[:, 1], c=positions, cmap="viridis", s=12, vmin=0.0, vmax=1.0, zorder=2)
    fig.colorbar(sc, ax=ax, label="slice position p")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
