"""Private building blocks shared by the slice-position losses: input checks, the cosine-similarity logits, the
position-distance matrix, dropping the diagonal, and the tie-aware ranked log-sum-exp denominator.

Everything here is O(N^2) in memory for N embeddings; nothing builds an N x N x N or N x N x D tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "as_embeddings_and_positions",
    "cosine_logits",
    "off_diagonal",
    "position_distances",
    "ranked_logsumexp",
    "sorted_ranked_logsumexp",
]


def as_embeddings_and_positions(z: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and flatten the inputs of a position loss.

    Args:
        z: embeddings, either (N, D), or (B, V, D) for V views of B slices; the latter is flattened view-major to
            (V * B, D) (all first views, then all second views), the layout of ``torch.cat([z1, z2])``.
        positions: normalised slice positions, (N,) for (N, D) input, or (B,) for (B, V, D) input (repeated for every
            view); any float or integer dtype, cast to ``z.dtype``; (N, 1) is accepted and flattened.

    Returns:
        ``(z, p)`` with shapes (N, D) and (N,), ``p`` on ``z``'s device and in ``z``'s dtype.

    Raises:
        ValueError: ``z`` is not a floating tensor of 2 or 3 dimensions, the position count does not match, or there
            are fewer than two embeddings.
    """
    if not torch.is_tensor(z) or not z.is_floating_point():
        got = f"{type(z).__name__} {getattr(z, 'dtype', '')}"
        raise ValueError(f"embeddings must be a floating-point tensor, got {got}")
    p = torch.as_tensor(positions, device=z.device)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise ValueError(f"positions must have shape (N,) or (N, 1), got {tuple(p.shape)}")
    if z.ndim == 3:
        if p.shape[0] != z.shape[0]:
            raise ValueError(f"(B, V, D) embeddings {tuple(z.shape)} need B = {z.shape[0]} positions, got {p.shape[0]}")
        views = z.shape[1]
        z = z.transpose(0, 1).reshape(views * z.shape[0], z.shape[2])
        p = p.repeat(views)
    elif z.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D) or (B, V, D), got {tuple(z.shape)}")
    if p.shape[0] != z.shape[0]:
        raise ValueError(f"{z.shape[0]} embeddings but {p.shape[0]} positions")
    if z.shape[0] < 2:
        raise ValueError(f"a pairwise loss needs at least two embeddings, got N = {z.shape[0]}")
    return z, p.to(dtype=z.dtype)


def cosine_logits(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``s_ab = cos(z_a, z_b) / temperature`` for all pairs, (N, D) -> (N, N), diagonal included."""
    zn = F.normalize(z, dim=1)
    return (zn @ zn.T) / temperature


def position_distances(p: torch.Tensor) -> torch.Tensor:
    """``d_ab = |p_a - p_b|``, (N,) -> (N, N), bitwise symmetric (``d_ab == d_ba``)."""
    return (p[:, None] - p[None, :]).abs()


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square (N, N) matrix as (N, N - 1): row a holds ``x[a, b]`` for ``b != a`` in
    increasing ``b``.

    Flattened and with the first element dropped, the remaining N^2 - 1 = (N - 1)(N + 1) entries laid out as
    (N - 1, N + 1) rows put every diagonal entry x[i, i] (i >= 1) in the last column; dropping that column leaves the
    off-diagonal entries in row-major order. Differentiable; no index tensors.
    """
    n = x.shape[0]
    if x.ndim != 2 or x.shape[1] != n:
        raise ValueError(f"off_diagonal needs a square matrix, got {tuple(x.shape)}")
    return x.reshape(-1)[1:].reshape(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def _group_end(keys_sorted: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """For rows sorted in descending order, the index of the last element of each element's tie group.

    A new group starts where a sorted key drops by more than ``tolerance`` from its predecessor (with 0: wherever the
    key changes). Each group's last element is marked with its own index and every other element with M (past the
    end); the reverse cumulative minimum then gives, for every ``j``, the first group end at or after ``j``: the end of
    ``j``'s group. Vectorised, no data-dependent shapes (so no device synchronisation on CUDA).
    """
    m = keys_sorted.shape[1]
    is_last = torch.ones_like(keys_sorted, dtype=torch.bool)
    is_last[:, :-1] = (keys_sorted[:, :-1] - keys_sorted[:, 1:]) > tolerance
    index = torch.arange(m, device=keys_sorted.device).expand_as(keys_sorted)
    marked = torch.where(is_last, index, m)
    return marked.flip(1).cummin(dim=1).values.flip(1)


def sorted_ranked_logsumexp(
    logits: torch.Tensor, keys: torch.Tensor, logit_bound: float | None = None, tie_tolerance: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the log-sum-exp of the logits over every entry whose key is at least as large as this entry's key,
    returned in key-sorted (descending) order together with the logits and keys in that order.

    ``out[a, j] = log sum_{k : keys[a, k] >= keys[a, j]} exp(logits[a, k])`` (the sum includes ``k = j`` and every
    entry tied with it), for ``j`` running over row ``a`` sorted by descending key. Each row is sorted by key, a
    cumulative log-sum-exp is taken along it, and each entry reads the cumulative value at the last element of its tie
    group (:func:`_group_end`). O(R * M log M) time and O(R * M) memory for (R, M) inputs; no Python loops.

    The cumulative log-sum-exp is ``c + log(cumsum(exp(logits - c)))`` with ``c = logit_bound`` when the logits are
    known to lie in ``[-logit_bound, logit_bound]`` (cosine logits: ``1 / tau``) and ``exp(-2 * logit_bound)`` is a
    normal number of the dtype: every term is then in ``(tiny, 1]`` and the sums of positive terms are accurate to
    rounding. Otherwise (no bound, or too wide a range) :func:`torch.logcumsumexp` is used; it is exact as well but
    about 15x slower on CPU.

    Args:
        logits: (R, M) floating tensor.
        keys: (R, M) tensor of the same shape (NaN keys are not supported).
        logit_bound: optional bound on ``|logits|``.
        tie_tolerance: keys that follow each other in sorted order with a gap of at most this are one tie group
            (chained); 0 compares exactly.

    Returns:
        ``(log_denominator, logits_sorted, keys_sorted, order)``, each (R, M): the first three permuted by the per-row
        ``order`` (``keys_sorted = keys.gather(1, order)``); differentiable with respect to ``logits``. Sums over a row
        are unchanged by the permutation.
    """
    if logits.shape != keys.shape or logits.ndim != 2:
        raise ValueError(f"logits and keys must be (R, M) of one shape, got {tuple(logits.shape)}, {tuple(keys.shape)}")
    keys_sorted, order = torch.sort(keys, dim=1, descending=True)
    logits_sorted = logits.gather(1, order)
    if logit_bound is not None and 2.0 * logit_bound < -math.log(torch.finfo(logits.dtype).tiny) - 1.0:
        cumulative = torch.log(torch.cumsum(torch.exp(logits_sorted - logit_bound), dim=1)) + logit_bound
    else:
        cumulative = torch.logcumsumexp(logits_sorted, dim=1)
    return cumulative.gather(1, _group_end(keys_sorted, tie_tolerance)), logits_sorted, keys_sorted, order


def ranked_logsumexp(
    logits: torch.Tensor, keys: torch.Tensor, logit_bound: float | None = None, tie_tolerance: float = 0.0
) -> torch.Tensor:
    """:func:`sorted_ranked_logsumexp` put back in the original (unsorted) order of each row, (R, M) -> (R, M)."""
    log_den, _, _, order = sorted_ranked_logsumexp(logits, keys, logit_bound, tie_tolerance)
    return torch.zeros_like(log_den).scatter(1, order, log_den)
