"""The CORAL pretraining objective: relational (RAL) plus ordinal (OAL) loss."""

from __future__ import annotations

import torch
from torch import nn

from ._pairwise import as_embeddings_and_positions
from .ordinal import OrdinalDirectionLoss
from .rank_contrastive import RelationalRankLoss

__all__ = ["CoralLoss"]


class CoralLoss(nn.Module):
    """CORAL loss (arXiv 2511.11276): ``L = L_RAL + alpha * L_OAL``.

    See :class:`RelationalRankLoss` and :class:`OrdinalDirectionLoss` for the two terms. The module owns OAL's learnable
    direction (``ordinal.direction`` in the state dict), so ``loss.parameters()`` must go to the optimiser together with
    the network's.

    After each call, ``last_terms`` holds detached 0-dim tensors ``{"loss", "ral", "oal"}`` for logging, e.g. in an
    Ignite step: ``return {k: v.item() for k, v in loss_fn.last_terms.items()}``.

    Args:
        feature_dim: ``D``, the projection size (size of OAL's direction).
        temperature: RAL's ``tau``.
        alpha: weight of OAL.
        kappa: slope of RAL's soft weight ``sigmoid(kappa * d)``.
        soft_weight: apply RAL's soft weight.
        tie_tolerance: RAL's tolerance for tied position distances (1e-6: the formula's ties for positions on slice
            grids; 0: exact float comparisons, as the released code). See :class:`RelationalRankLoss`.
        seed: seed for the initial OAL direction; ``None`` uses torch's global RNG.
        precise_distances: OAL's pairwise distances in float64 (see :class:`OrdinalDirectionLoss`).
    """

    def __init__(
        self,
        feature_dim: int,
        temperature: float = 0.1,
        alpha: float = 1.0,
        kappa: float = 1.0,
        soft_weight: bool = True,
        tie_tolerance: float = 1e-6,
        seed: int | None = None,
        precise_distances: bool = True,
    ) -> None:
        super().__init__()
        self.relational = RelationalRankLoss(
            temperature=temperature, kappa=kappa, soft_weight=soft_weight, tie_tolerance=tie_tolerance
        )
        self.ordinal = OrdinalDirectionLoss(feature_dim, seed=seed, precise_distances=precise_distances)
        self.alpha = float(alpha)
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """
        Args:
            z: unnormalised projections, (N, D), or (B, V, D) for V views of B slices (flattened view-major).
            positions: slice positions, (N,) or, for (B, V, D) input, (B,).

        Returns:
            0-dim tensor, the total loss; the parts are in ``last_terms``.

        Raises:
            ValueError: bad shapes, fewer than two embeddings, or ``D != feature_dim``.
        """
        z, p = as_embeddings_and_positions(z, positions)
        ral = self.relational(z, p)
        oal = self.ordinal(z, p)
        total = ral + self.alpha * oal
        self.last_terms = {"loss": total.detach(), "ral": ral.detach(), "oal": oal.detach()}
        return total

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
