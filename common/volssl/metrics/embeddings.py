"""Embedding diagnostics of a slice encoder: does it encode the slice position, and has it collapsed?

Slice pretraining (CORAL, PCL, SAL) shapes a 2D encoder with the slices' normalised positions ``p = (i + 1) / S``
along the volume. Four numbers, computed on the globally average-pooled features of one encoder level (the
bottleneck by default) of every slice of a few volumes, tell whether it learned something or collapsed:

- ``position_r2``: R^2 of a ridge regression of ``p`` from the pooled features, fitted on half of the volumes and
  scored on the other half (:func:`ridge_position_r2`). 1: position is a linear function of the features in unseen
  volumes; 0: no better than the mean position.
- ``nn_position_error``: for each slice, its nearest neighbour (cosine) among the slices of the *other* volumes;
  the median ``|p_a - p_b|`` (:func:`nn_position_error`). 0: the nearest slice of another subject sits at the same
  relative position; about 0.29 (the median gap of two uniform positions): unrelated to position.
- ``cosine_mean``: the mean cosine similarity over all pairs of distinct slices (:func:`cosine_mean`). 1: every
  embedding points the same way (collapse).
- ``channel_std``: the standard deviation over slices of each channel of the L2-normalised embeddings, averaged over
  channels (:func:`channel_std`). Collapse drives it to 0; for isotropic random embeddings of dimension ``D`` it is
  about ``1 / sqrt(D)``, so compare it between encoders of the same width (e.g. pretrained vs random init).

Everything here is numpy/torch (no scikit-learn) and runs in float64 on the CPU: a probe of a few hundred slices takes
milliseconds once the features are computed. :func:`pooled_features` computes them, :func:`load_probe_slices` builds
a deterministic probe set (every slice of a few volumes, centre-cropped), :func:`embedding_diagnostics` returns the
four numbers, :func:`project_2d` a PCA projection for :func:`volssl.viz.plot_embeddings`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_RIDGE_ALPHAS",
    "DIAGNOSTIC_KEYS",
    "channel_std",
    "cosine_mean",
    "embedding_diagnostics",
    "load_probe_slices",
    "nn_position_error",
    "pooled_features",
    "project_2d",
    "ridge_position_r2",
    "split_volumes",
]

#: The four diagnostics, in the order :func:`embedding_diagnostics` returns them.
DIAGNOSTIC_KEYS = ("position_r2", "nn_position_error", "cosine_mean", "channel_std")

#: Ridge penalties tried on standardised features; one is chosen by a grouped 2-fold split of the fitting volumes.
DEFAULT_RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def _as_float64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x.detach().cpu(), dtype=torch.float64)


def _check(features, positions=None, volumes=None) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray | None]:
    x = _as_float64(features)
    if x.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(x.shape)}")
    p = None if positions is None else _as_float64(positions).reshape(-1)
    if p is not None and p.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {p.shape[0]} positions")
    v = None if volumes is None else np.asarray(volumes).reshape(-1)
    if v is not None and v.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {v.shape[0]} volume ids")
    return x, p, v


def _unit(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def channel_std(features) -> float:
    """Mean over channels of the standard deviation over samples (population, ddof 0) of the L2-normalised rows.

    Args:
        features: (N, D) embeddings (rows are normalised here).

    Returns:
        0 for a constant embedding (collapse); about ``1 / sqrt(D)`` for isotropic random embeddings.
    """
    x, _, _ = _check(features)
    return float(_unit(x).std(dim=0, unbiased=False).mean())


def cosine_mean(features) -> float:
    """Mean cosine similarity over all pairs of distinct rows: ``(|sum_a u_a|^2 - N) / (N (N - 1))`` for unit rows u.

    Args:
        features: (N, D) embeddings, N >= 2.

    Returns:
        1 for a constant embedding; about 0 for isotropic random embeddings.
    """
    x, _, _ = _check(features)
    n = x.shape[0]
    if n < 2:
        raise ValueError("cosine_mean needs at least two embeddings")
    u = _unit(x)
    total = u.sum(dim=0)
    return float((total @ total - (u * u).sum()) / (n * (n - 1)))


def nn_position_error(features, positions, volumes) -> float:
    """Median over slices of ``|p_a - p_b|``, ``b`` the nearest neighbour (highest cosine) of ``a`` among the slices of
    the other volumes.

    Args:
        features: (N, D) embeddings.
        positions: (N,) normalised slice positions.
        volumes: (N,) volume ids (any hashable values); at least two different ones.

    Returns:
        the median position error; ties in the cosine go to the first slice in input order.
    """
    x, p, v = _check(features, positions, volumes)
    _, codes = np.unique(v, return_inverse=True)
    codes = torch.as_tensor(codes)
    if int(codes.max()) < 1:
        raise ValueError("nn_position_error needs slices of at least two volumes")
    u = _unit(x)
    sim = u @ u.T
    sim[codes[:, None] == codes[None, :]] = -math.inf  # only slices of other volumes are candidates
    nearest = sim.argmax(dim=1)
    return float((p - p[nearest]).abs().median())


def split_volumes(volumes) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(fit, score)`` of the rows: the volumes in order of first appearance, alternately to the fitting
    half (1st, 3rd, ...) and to the scored half (2nd, 4th, ...), so both halves span the list.

    Raises:
        ValueError: fewer than two volumes.
    """
    v = np.asarray(volumes).reshape(-1)
    order = list(dict.fromkeys(v.tolist()))
    if len(order) < 2:
        raise ValueError("a split by volume needs at least two volumes")
    fit_ids = set(order[0::2])
    fit = np.asarray([x in fit_ids for x in v.tolist()], dtype=bool)
    return fit, ~fit


def _ridge_predictions(x_fit, y_fit, x_eval, alphas) -> list[torch.Tensor]:
    """Ridge on standardised features (fit statistics), with intercept, for every alpha; one SVD for all."""
    mean, std = x_fit.mean(dim=0), x_fit.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant columns carry no information
    a, b = (x_fit - mean) / std, (x_eval - mean) / std
    y_mean = y_fit.mean()
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    uty = u.T @ (y_fit - y_mean)
    return [y_mean + b @ (vh.T @ (s / (s * s + alpha) * uty)) for alpha in alphas]


def _r2(y: torch.Tensor, pred: torch.Tensor) -> float:
    total = ((y - y.mean()) ** 2).sum()
    if float(total) == 0.0:
        return float("nan")  # one position only: R^2 is undefined
    return float(1.0 - ((y - pred) ** 2).sum() / total)


def ridge_position_r2(features, positions, volumes, alphas: Sequence[float] = DEFAULT_RIDGE_ALPHAS) -> float:
    """R^2 of the slice position predicted by ridge regression from the features, on volumes left out of the fit.

    The rows are split by volume (:func:`split_volumes`). Features are standardised with the fitting half's mean and
    std; ``p`` is regressed with an intercept. The penalty is chosen from ``alphas`` by a grouped 2-fold split of the
    fitting volumes (the same alternate rule), then the model is refitted on the whole fitting half and scored once
    on the other half: ``R^2 = 1 - sum (p - p_hat)^2 / sum (p - mean p)^2`` over the scored slices. With a single
    fitting volume the median alpha is used.

    Args:
        features: (N, D) features (not normalised; ridge standardises them).
        positions: (N,) normalised slice positions.
        volumes: (N,) volume ids; at least two volumes.
        alphas: ridge penalties to choose from.

    Returns:
        R^2 on the scored half (can be negative: worse than predicting its mean); NaN if every scored slice has the
        same position.
    """
    x, p, v = _check(features, positions, volumes)
    alphas = [float(a) for a in alphas]
    if not alphas or min(alphas) < 0:
        raise ValueError(f"alphas must be non-negative and not empty, got {alphas}")
    fit, score = split_volumes(v)
    fit_t, score_t = torch.as_tensor(fit), torch.as_tensor(score)
    alpha = sorted(alphas)[len(alphas) // 2]
    if len(set(v[fit].tolist())) >= 2 and len(alphas) > 1:
        inner_a, inner_b = split_volumes(v[fit])
        xf, pf = x[fit_t], p[fit_t]
        ia, ib = torch.as_tensor(inner_a), torch.as_tensor(inner_b)
        errors = np.zeros(len(alphas))
        for train, held in ((ia, ib), (ib, ia)):
            for k, pred in enumerate(_ridge_predictions(xf[train], pf[train], xf[held], alphas)):
                errors[k] += float(((pf[held] - pred) ** 2).sum())
        alpha = alphas[int(np.argmin(errors))]
    pred = _ridge_predictions(x[fit_t], p[fit_t], x[score_t], [alpha])[0]
    return _r2(p[score_t], pred)


def embedding_diagnostics(features, positions, volumes) -> dict[str, float]:
    """The four diagnostics of the module docstring, in the order of :data:`DIAGNOSTIC_KEYS`.

    Args:
        features: (N, D) pooled features of every probe slice (not normalised).
        positions: (N,) normalised slice positions.
        volumes: (N,) volume ids; at least two volumes.

    Returns:
        ``{"position_r2", "nn_position_error", "cosine_mean", "channel_std"}`` as floats.
    """
    x, p, v = _check(features, positions, volumes)
    return {
        "position_r2": ridge_position_r2(x, p, v),
        "nn_position_error": nn_position_error(x, p, v),
        "cosine_mean": cosine_mean(x),
        "channel_std": channel_std(x),
    }


def project_2d(features) -> np.ndarray:
    """The first two principal components of the L2-normalised features (centred), (N, 2); the sign of each
    component is fixed so that its largest-magnitude loading is positive (reproducible figures)."""
    x, _, _ = _check(features)
    u = _unit(x)
    centred = u - u.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    comps = vh[:2]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    out = centred @ (comps * signs).T
    if out.shape[1] < 2:  # one-dimensional features: pad the second axis with zeros
        out = torch.cat([out, torch.zeros(out.shape[0], 2 - out.shape[1], dtype=out.dtype)], dim=1)
    return out.numpy()


@torch.no_grad()
def pooled_features(
    encoder: nn.Module,
    images: torch.Tensor,
    level: int = -1,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Globally average-pooled features of one level of a :class:`~volssl.networks.UNetEncoder2d`, in eval mode.

    The encoder is put in eval mode (BatchNorm uses its running statistics, so a slice's features do not depend on
    the other slices of its batch) and restored to its previous mode afterwards.

    Args:
        encoder: a module whose forward returns the list of level features (``levels[-1]``: the bottleneck).
        images: (N, C, H, W) slices.
        level: the level to pool (-1: the bottleneck).
        batch_size: slices per forward pass.
        device: where to run (default: the encoder's device).

    Returns:
        (N, channels of the level) float32 features on the CPU.
    """
    if device is None:
        device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        out = []
        for start in range(0, images.shape[0], max(1, int(batch_size))):
            batch = images[start : start + batch_size].to(device=device, dtype=torch.float32)
            feats = encoder(batch)[level]
            out.append(feats.float().mean(dim=(2, 3)).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out, dim=0)


def load_probe_slices(
    data: Sequence[Mapping],
    volume_transform: Callable | None,
    patch_size: Sequence[int] | int | None,
    slice_axis: int = -1,
    max_volumes: int | None = None,
    image_key: str = "image",
) -> dict:
    """Every slice of the first ``max_volumes`` volumes of ``data``, preprocessed and centre-cropped: a deterministic
    probe set.

    Args:
        data: volume entries (``[{"image": path}, ...]``, e.g. :func:`volssl.data.load_images`).
        volume_transform: the per-volume preprocessing (e.g. the bundle's ``pretrain#preprocessing``).
        patch_size: each slice is zero-padded (centred) and centre-cropped to this size (the released code's
            validation crop, :func:`volssl.data.augment.finetune_val_transform`); ``None``: keep the slice size (all
            slices must then have the same size).
        slice_axis: the spatial slice axis.
        max_volumes: use the first this many volumes (``None``: all).
        image_key: the image key.

    Returns:
        ``{"images": (N, C, h, w) float32, "positions": (N,) float64, "volumes": (N,) int64 volume index,
        "cases": list of the volumes' case names}``.
    """
    from ..data.augment import finetune_val_transform
    from ..data.slices import CASE_KEY, POSITION_KEY, VOLUME_INDEX_KEY, SliceDataset

    entries = list(data)[: None if max_volumes is None else max(1, int(max_volumes))]
    dataset = SliceDataset(
        entries,
        volume_transform=volume_transform,
        slice_transform=finetune_val_transform(keys=(image_key,), patch_size=patch_size),
        slice_axis=slice_axis,
        keys=(image_key,),
    )
    items = [dataset[k] for k in range(len(dataset))]
    images = torch.stack([torch.as_tensor(it[image_key]).float() for it in items])
    cases: dict[int, str] = {}
    for it in items:
        cases.setdefault(int(it[VOLUME_INDEX_KEY]), str(it.get(CASE_KEY, it[VOLUME_INDEX_KEY])))
    return {
        "images": images.as_subclass(torch.Tensor),
        "positions": np.asarray([float(it[POSITION_KEY]) for it in items], dtype=np.float64),
        "volumes": np.asarray([int(it[VOLUME_INDEX_KEY]) for it in items], dtype=np.int64),
        "cases": [cases[k] for k in sorted(cases)],
    }
