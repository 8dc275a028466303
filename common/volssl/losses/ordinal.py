"""CORAL's ordinal loss (OAL): differences of embeddings along increasing slice position align with a learned
direction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._pairwise import as_embeddings_and_positions

__all__ = ["OrdinalDirectionLoss"]


class OrdinalDirectionLoss(nn.Module):
    """Ordinal direction loss of CORAL (arXiv 2511.11276).

    A learnable direction ``v`` in R^D (an ``nn.Parameter``, initialised N(0, 1)); ``v_hat = v / ||v||``. For every
    pair with ``p_a < p_b`` (strict; pairs may mix volumes and views), ``u_ab = (z_b - z_a) / ||z_b - z_a||`` on the
    unnormalised projections, and::

        L = - mean_{(a, b) : p_a < p_b} u_ab . v_hat

    No N x N x D difference tensor is built (1024^2 x 512 float32 would be 2 GiB). The identities used are::

        u_ab . v_hat    = (z_b . v_hat - z_a . v_hat) / ||z_b - z_a||
        ||z_b - z_a||^2 = |z_b|^2 + |z_a|^2 - 2 z_a . z_b

    so memory is O(N^2). To limit cancellation in the second identity, ``z`` is first centred on its batch mean
    (differences, and their gradients, do not change); the squared distance is clamped below at ``eps`` (default
    1e-12, a distance floor of 1e-6: a pair closer than that has ``u_ab`` ~ 0, like ``F.normalize`` of a zero vector),
    and the cosine is clamped to [-1, 1] against rounding. With no pair (all positions equal) the loss is 0, still
    connected to ``z`` and ``v`` so that ``backward()`` works and gives zero gradients.

    Accuracy: in a given dtype the identity loses relative accuracy for pairs closer than about
    ``sqrt(machine eps) * ||z - mean||`` (~3e-4 of the spread in float32), where the explicit difference would not;
    since the gradient of ``u_ab`` grows like ``1 / ||z_b - z_a||``, float32 near-duplicate pairs give wrong and
    spiky gradients (measured: 1e-4 relative noise between two embeddings, gradient error 2000x the true gradient).
    Hence, by default (``precise_distances=True``), the projections and the Gram matrix are computed in float64 (an
    (N, D) x (D, N) product, ~1 GFLOP at N = 1024, D = 512, cheap even where float64 is slow); the distances and
    projection differences, once formed, go back to ``z``'s dtype. ``False`` keeps everything in ``z``'s dtype.

    ``v`` lives in the module's ``state_dict`` (key ``direction``) and must be given to the optimiser together with
    the network's parameters (e.g. ``list(net.parameters()) + list(loss.parameters())``). Only its direction matters;
    weight decay on it shrinks ``||v||``, which raises the effective step size of the direction.

    Args:
        feature_dim: ``D``, the projection size.
        seed: seed of a private generator for the initial ``v``; ``None`` draws from torch's global RNG.
        eps: floor of the squared pairwise distance.
        precise_distances: compute projections and pairwise distances in float64 (see Accuracy above).

    Raises:
        ValueError: ``feature_dim < 1`` or ``eps <= 0``.
    """

    def __init__(
        self, feature_dim: int, seed: int | None = None, eps: float = 1e-12, precise_distances: bool = True
    ) -> None:
        super().__init__()
        if int(feature_dim) < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.direction = nn.Parameter(torch.randn(int(feature_dim), generator=generator))
        self.eps = float(eps)
        self.precise_distances = bool(precise_distances)

    def forward(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """
        Args:
            z: unnormalised projections, (N, D), or (B, V, D) for V views of B slices (flattened view-major).
            positions: slice positions, (N,) or, for (B, V, D) input, (B,).

        Returns:
            0-dim tensor, the loss in [-1, 1], in ``z``'s dtype.

        Raises:
            ValueError: bad shapes, fewer than two embeddings, or ``D`` different from ``feature_dim``.
        """
        z, p = as_embeddings_and_positions(z, positions)
        if z.shape[1] != self.direction.shape[0]:
            raise ValueError(f"embeddings have D = {z.shape[1]}, the direction has {self.direction.shape[0]}")
        work = torch.float64 if self.precise_distances else z.dtype
        v_hat = F.normalize(self.direction.to(dtype=work), dim=0)
        zw = z.to(dtype=work)
        zc = zw - zw.mean(dim=0, keepdim=True).detach()
        proj = zc @ v_hat  # (N,): z_a . v_hat (up to a shift that cancels in differences)
        sq = (zc * zc).sum(dim=1)
        dist2 = (sq[:, None] + sq[None, :] - 2.0 * (zc @ zc.T)).clamp_min(self.eps)  # [a, b] = ||z_b - z_a||^2
        # The cancellations happen above and in the next difference; once formed, both keep their relative accuracy
        # in z's dtype, which halves the float64 memory.
        dist = dist2.sqrt().to(dtype=z.dtype)
        rise = (proj[None, :] - proj[:, None]).to(dtype=z.dtype)  # [a, b] = (z_b - z_a) . v_hat
        cosine = (rise / dist).clamp(-1.0, 1.0)  # [a, b] = u_ab . v_hat
        pairs = p[:, None] < p[None, :]  # [a, b]: p_a < p_b
        count = pairs.sum()
        # No data-dependent branch: with no pair the masked sum is 0 and the divisor 1.
        return -torch.where(pairs, cosine, torch.zeros_like(cosine)).sum() / count.clamp_min(1).to(z.dtype)

    def extra_repr(self) -> str:
        return f"feature_dim={self.direction.shape[0]}, eps={self.eps}, precise_distances={self.precise_distances}"
