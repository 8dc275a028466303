"""PNG figures: learning curves and slice overlays (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_learning_curves", "plot_overlay"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(rows: Sequence[dict], path) -> Path:
    """Plot every column of ``rows`` (dicts with an ``epoch`` key) against the epoch: losses on the left, validation
    metrics on the right. Returns the PNG path."""
    plt = _pyplot()
    path = Path(path)
    epochs = [r["epoch"] for r in rows]
    train = sorted({k for r in rows for k in r if k.startswith("train_")})
    val = sorted({k for r in rows for k in r if k.startswith("val_")})
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 5, 3.5), squeeze=False)
    for key in train:
        axes[0, 0].plot(epochs, [r.get(key, np.nan) for r in rows], label=key[len("train_") :])
    axes[0, 0].set(xlabel="epoch", ylabel="training loss", title="training")
    axes[0, 0].legend(fontsize=8)
    if val:
        for key in val:
            axes[0, 1].plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", label=key[len("val_") :])
        axes[0, 1].set(xlabel="epoch", ylabel="metric", title="validation")
        axes[0, 1].legend(fontsize=8)
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
