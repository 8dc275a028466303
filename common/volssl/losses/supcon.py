"""Supervised-contrastive (SupCon) loss with positives chosen by slice position: the PCL baseline."""

from __future__ import annotations

import torch
from torch import nn

from ._pairwise import as_embeddings_and_positions, cosine_logits, off_diagonal, position_distances

__all__ = ["PositionalContrastiveLoss", "supcon_from_positives"]


def supcon_from_positives(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SupCon over off-diagonal logits: per anchor, minus the mean log-softmax of its positives, averaged over anchors.

    ``L = mean_{a : P(a) != {}} -1/|P(a)| sum_{b in P(a)} [ s_ab - log sum_{k != a} exp(s_ak) ]``

    Args:
        logits: (N, N - 1) off-diagonal logits (row a holds ``s_ab`` for ``b != a``).
        positives: (N, N - 1) boolean mask of the positives, same layout.

    Returns:
        0-dim tensor. Anchors without a positive are left out of the mean (the released SupCon code would return
        NaN for them); with no positive anywhere the loss is 0, still connected to ``logits``.
    """
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = positives.sum(dim=1)
    mean_pos = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / n_pos.clamp_min(1)
    has_pos = n_pos > 0
    return -(mean_pos * has_pos).sum() / has_pos.sum().clamp_min(1).to(logits.dtype)


class PositionalContrastiveLoss(nn.Module):
    """Positional contrastive loss (PCL, Zeng et al., MICCAI 2021), the baseline of CORAL.

    SupCon with ``s_ab = cos(z_a, z_b) / tau``; the positives of anchor ``a`` are all ``b != a`` with
    ``|p_a - p_b| < threshold`` (strict, as in the public code), which includes the other view of the same slice
    (``d = 0``); every ``k != a`` is in the denominator::

        L = (tau / base_tau) * mean_a -1/|P(a)| sum_{b in P(a)} log( exp(s_ab) / sum_{k != a} exp(s_ak) )

    The public code (positional_cl, and CORAL's copy) constructs SupCon with ``temperature = 0.1`` but leaves
    ``base_temperature`` at its default 0.07, so its loss carries a constant factor 0.1 / 0.07 ~ 1.43 (which scales
    the gradient and so the effective learning rate). ``base_temperature=0.07`` reproduces that; ``None`` sets it to
    ``temperature`` (factor 1). Threshold 0.35 is the ACDC value of CORAL's README (positional_cl's README uses 0.3).

    Args:
        threshold: position gap below which two embeddings are positives.
        temperature: ``tau``.
        base_temperature: see above; ``None`` for no rescaling.

    Raises:
        ValueError: non-positive ``temperature`` or ``base_temperature``.
    """

    def __init__(
        self, threshold: float = 0.35, temperature: float = 0.1, base_temperature: float | None = 0.07
    ) -> None:
        super().__init__()
        if temperature <= 0 or (base_temperature is not None and base_temperature <= 0):
            raise ValueError(f"temperatures must be positive, got {temperature}, {base_temperature}")
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.base_temperature = float(temperature if base_temperature is None else base_temperature)

    def forward(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """
        Args:
            z: projections, (N, D), or (B, V, D) for V views of B slices (flattened view-major).
            positions: slice positions, (N,) or, for (B, V, D) input, (B,).

        Returns:
            0-dim tensor, the loss.

        Raises:
            ValueError: bad shapes, or fewer than two embeddings.
        """
        z, p = as_embeddings_and_positions(z, positions)
        logits = off_diagonal(cosine_logits(z, self.temperature))
        positives = off_diagonal(position_distances(p)) < self.threshold
        return (self.temperature / self.base_temperature) * supcon_from_positives(logits, positives)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, temperature={self.temperature}, base_temperature={self.base_temperature}"
