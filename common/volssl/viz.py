"""PNG figures: learning curves and slice overlays (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["learning_curves_figure", "plot_embeddings", "plot_learning_curves", "plot_overlay"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# training outputs that are not losses (CRLN's rectification scale ``a`` and its unsupervised-weight ramp): drawn on
# a panel of their own, so that the loss axis holds losses only
SCALAR_KEYS = ("a", "unsup_weight", "ema_decay", "lr", "learning_rate")
# the validation metric that selects the checkpoint when a run records it (the bundles' key metric)
KEY_METRIC = "val_mean_dice"
# embedding-probe diagnostics (volssl.metrics.embeddings): which direction is better, for the legend
PROBE_BETTER = {
    "position_r2": "higher is better, 1 = position encoded",
    "nn_position_error": "lower is better",
    "cosine_mean": "lower is better, 1 = collapse",
    "channel_std": "higher is better, 0 = collapse",
}


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """The epochs that have a value for ``key`` and those values (a probe runs every few epochs, validation too)."""
    points = [(r["epoch"], r[key]) for r in rows if key in r and r[key] == r[key]]
    return ([p[0] for p in points], [p[1] for p in points]) if points else ([], [])


def _distinct(rows: Sequence[dict], keys: Sequence[str], prefix: str) -> list[tuple[str, list[str]]]:
    """``keys`` grouped by identical series: ``(key drawn, labels of every key it stands for)``; two equal series
    (CRLN's ``val_mean_dice`` is ``val_mean_dice_teacher``) are one line with one legend entry naming both."""
    groups: list[tuple[str, list[str]]] = []
    for key in keys:
        series = _series(rows, key)
        if not series[0]:
            continue  # no value at all: no line, hence no legend entry
        same = next((g for g in groups if _series(rows, g[0]) == series), None)
        if same is None:
            groups.append((key, [key[len(prefix) :]]))
        else:
            same[1].append(key[len(prefix) :])
    return groups


def learning_curves_figure(rows: Sequence[dict]):
    """The matplotlib figure :func:`plot_learning_curves` writes, for rows of per-epoch scalars (dicts with an
    ``epoch`` key): one panel each for the training losses, the other training scalars (``a``, ``unsup_weight``),
    the validation metrics (the best epoch of :data:`KEY_METRIC`, or of the first metric, marked) and the
    embedding-probe diagnostics (``probe_*``, each labelled with its better direction); integer epoch ticks."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    keys = sorted({k for r in rows for k in r})
    train = [k for k in keys if k.startswith("train_") and k[len("train_") :] not in SCALAR_KEYS]
    scalars = [k for k in keys if k.startswith("train_") and k[len("train_") :] in SCALAR_KEYS]
    val = [k for k in keys if k.startswith("val_")]
    probe = [k for k in keys if k.startswith("probe_")]
    panels = [
        (kind, group)
        for kind, group in (("train", train), ("scalars", scalars), ("val", val), ("probe", probe))
        if group or kind == "train"
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (kind, group) in zip(axes[0], panels):
        prefix = {"train": "train_", "scalars": "train_", "val": "val_", "probe": "probe_"}[kind]
        for key, names in _distinct(rows, group, prefix):
            label = " = ".join(names)
            if kind == "probe":
                label += f" ({PROBE_BETTER.get(names[0], 'see volssl.metrics.embeddings')})"
            ax.plot(*_series(rows, key), marker="o" if kind == "val" else ".", markersize=3, label=label)
        if kind == "val":
            best_key = KEY_METRIC if KEY_METRIC in group else group[0]
            epochs, values = _series(rows, best_key)
            if epochs:
                best = int(np.argmax(values))
                ax.axvline(
                    epochs[best],
                    color="0.4",
                    linestyle="--",
                    linewidth=1,
                    label=f"best epoch {int(epochs[best])} ({best_key[len('val_'):]} {values[best]:.3f})",
                )
        ylabel, title = {
            "train": ("loss (dimensionless, lower is better)", "training losses (mean per epoch)"),
            "scalars": ("value (dimensionless)", "training schedule scalars"),
            "val": ("Dice (0-1, higher is better)" if any("dice" in k for k in group) else "metric", "validation"),
            "probe": ("diagnostic value (dimensionless)", "embedding probe"),
        }[kind]
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_lines():  # a row written before the first epoch (a probe at epoch 0) has no loss yet
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_learning_curves(rows: Sequence[dict], path) -> Path:
    """Write :func:`learning_curves_figure` of ``rows`` as a PNG; returns its path."""
    plt = _pyplot()
    path = Path(path)
    fig = learning_curves_figure(rows)
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
