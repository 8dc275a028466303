"""The SAL pretraining network: PCL's 2D encoder, a 1x1 embedding for local alignment and a global positional head.

SAL (self-supervised alignment learning, arXiv 2406.15699) has no public code; this is a reconstruction (the SAL
bundle's model card labels each choice). A pair of nearby slices ``(S_i, S_j)`` of one volume goes through the shared
:class:`~volssl.networks.UNetEncoder2d`:

- local alignment: the level-``level`` feature maps go through a 1x1 conv embedding ``E``;
  :class:`volssl.losses.LocalAlignmentLoss` L2-normalises them per location and aligns them. The level is chosen so
  that a window holds real structure (level 3, 44 x 44 for a 352 x 352 patch; level 2, 16 x 16 for 64 x 64), not
  the bottleneck, whose few locations each see more than the slice;
- global position: the level-``position_level`` feature maps (default the bottleneck) are globally average-pooled and
  a small MLP (:class:`PositionalHead`) projects each slice for the contrastive GP (``"contrastive"``, the default;
  the loss compares the projections of all slices of the batch, from many volumes), or predicts the signed offset
  ``p_j - p_i`` from the concatenated pooled features (``"relative"``), or each slice's own position
  (``"absolute"``); :class:`volssl.losses.GlobalPositionalLoss` turns the output into the loss.

The embedding and the head live in the network (not the loss) so that one optimiser and one checkpoint hold every
trained parameter. The encoder attribute is named ``encoder`` as in :class:`~volssl.networks.UNet2d`, so
:func:`~volssl.networks.load_encoder_weights` (prefix ``"encoder."``) moves it to the fine-tuning network and drops
``embedding.*`` and ``position_head.*``.
"""

from __future__ import annotations

import torch
from torch import nn

from .unet2d import UNetEncoder2d

__all__ = [
    "EMBEDDING_KEY",
    "EMBEDDING_2_KEY",
    "POSITION_PRED_KEY",
    "POSITION_MODES",
    "PositionalHead",
    "SalPretrainNet2d",
]

#: Output key of the embedded feature map of the first slice, (B, embed_dim, h, w).
EMBEDDING_KEY = "embedding"
#: Output key of the embedded feature map of the second slice, (B, embed_dim, h, w).
EMBEDDING_2_KEY = "embedding_2"
#: Output key of the global positional output: (B, 2, D) projections for ``"contrastive"``, (B,) predicted offsets for
#: ``"relative"``, (B, 2) predicted positions for ``"absolute"``.
POSITION_PRED_KEY = "position_pred"
POSITION_MODES = ("contrastive", "relative", "absolute")


def _check_position_mode(mode: str) -> str:
    if mode not in POSITION_MODES:
        raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {mode!r}.")
    return mode


def _check_level(level: int, num_levels: int, name: str) -> int:
    if not -num_levels <= int(level) < num_levels:
        raise ValueError(
            f"{name} must index one of the encoder's {num_levels} levels (0..{num_levels - 1} or "
            f"-{num_levels}..-1, -1 = bottleneck), got {level}."
        )
    return int(level)


class PositionalHead(nn.Module):
    """MLP on globally pooled features for the global positional loss: ``Linear -> ReLU -> Linear``.

    - ``"contrastive"``: the MLP on each slice alone, ``g`` (B, C) -> a projection (B, ``out_dim``); for a pair it
      returns ``stack(z_i, z_j)``, shape (B, 2, out_dim) (as the projection head of PCL / CORAL).
    - ``"relative"``: input ``concat(g_i, g_j)`` (B, 2C) -> predicted offset ``p_j - p_i``, shape (B,). The
      concatenation is ordered, so the head can tell the sign of the offset.
    - ``"absolute"``: the MLP on each slice alone, ``g`` (B, C) -> ``p``; for a pair it returns
      ``stack(p_i_hat, p_j_hat)``, shape (B, 2).

    The linear layers keep PyTorch's default initialisation (as :class:`~volssl.networks.ProjectionHead`).

    Args:
        in_channels: ``C``, channels of one pooled feature vector.
        hidden_dim: width of the hidden layer.
        mode: ``"contrastive"``, ``"relative"`` or ``"absolute"``.
        out_dim: projection size in contrastive mode (the regression modes output one number).

    Raises:
        ValueError: a non-positive size or an unknown ``mode``.
    """

    def __init__(self, in_channels: int, hidden_dim: int = 256, mode: str = "contrastive", out_dim: int = 128) -> None:
        super().__init__()
        if min(in_channels, hidden_dim, out_dim) < 1:
            raise ValueError(
                f"sizes must be positive, got in_channels={in_channels}, hidden_dim={hidden_dim}, out_dim={out_dim}."
            )
        self.mode = _check_position_mode(mode)
        self.in_channels = in_channels
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim if mode == "contrastive" else 1
        mlp_in = 2 * in_channels if mode == "relative" else in_channels
        self.fc1 = nn.Linear(mlp_in, hidden_dim)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, self.out_dim)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(x)))
        return out if self.mode == "contrastive" else out.squeeze(-1)

    def forward(self, g_i: torch.Tensor, g_j: torch.Tensor) -> torch.Tensor:
        """
        Args:
            g_i: pooled features of the first slices, (B, C).
            g_j: pooled features of the second slices, (B, C).

        Returns:
            ``"contrastive"``: projections (B, 2, out_dim); ``"relative"``: predicted ``p_j - p_i``, (B,);
            ``"absolute"``: predicted ``(p_i, p_j)``, (B, 2).
        """
        if self.mode == "relative":
            return self._mlp(torch.cat([g_i, g_j], dim=1))
        if self.mode == "contrastive":
            # one pass over the 2B slices (the same weights for both)
            return self._mlp(torch.cat([g_i, g_j], dim=0)).reshape(2, g_i.shape[0], -1).transpose(0, 1)
        return torch.stack([self._mlp(g_i), self._mlp(g_j)], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, out_dim={self.out_dim}"


class SalPretrainNet2d(nn.Module):
    """SAL pretraining network: :class:`~volssl.networks.UNetEncoder2d` + 1x1 conv embedding + :class:`PositionalHead`.

    Both slices of a pair go through the encoder in one batch of 2B (so BatchNorm sees both, as in the two-view
    pretraining of CORAL). ``forward(x_i, x_j)`` returns a dict:

    - ``"embedding"``: ``E(F_level(x_i))``, (B, embed_dim, h, w), not normalised (the loss normalises per location);
    - ``"embedding_2"``: ``E(F_level(x_j))``, same shape;
    - ``"position_pred"``: from the globally average-pooled level-``position_level`` features: (B, 2, position_dim)
      projections of both slices (``"contrastive"``), (B,) predicted ``p_j - p_i`` (``"relative"``) or (B, 2)
      predicted ``(p_i, p_j)`` (``"absolute"``).

    ``(h, w)`` is the size of the chosen level, ``(H / 2^k, W / 2^k)`` for level ``k`` of 0..4 (see
    :class:`~volssl.networks.UNetEncoder2d`; the default ``level=3`` gives ``H/8 x W/8``); the windowed local alignment
    needs it divisible by its window count.

    Parameters at ``in_channels=1`` and the defaults (level 3, contrastive head on the bottleneck): 10,881,424 for
    ``features=48`` (encoder 10,602,384) and 1,294,640 for ``features=16``.

    Args:
        in_channels: input image channels.
        features: base width ``f`` of the encoder.
        embed_dim: output channels of the 1x1 embedding ``E`` (128 by default).
        level: encoder level whose feature map is embedded for local alignment (0..4, or -5..-1 with -1 the
            bottleneck; default 3, ``8f`` channels at ``H/8 x W/8``).
        position_mode: ``"contrastive"`` (default), ``"relative"`` or ``"absolute"``, see :class:`PositionalHead`.
        norm: normalisation of the encoder levels, see :class:`~volssl.networks.UNetEncoder2d`.
        negative_slope: LeakyReLU slope of the encoder.
        position_level: encoder level pooled for the positional head (-1: the bottleneck, as PCL / CORAL pool it).
        position_hidden_dim: hidden width of the positional head.
        position_dim: projection size of the contrastive head.

    Raises:
        ValueError: a level outside the encoder's 5 levels, an unknown ``position_mode`` or a non-positive size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: int = 48,
        embed_dim: int = 128,
        level: int = 3,
        position_mode: str = "contrastive",
        norm: str | None = "batch",
        negative_slope: float = 0.01,
        position_level: int = -1,
        position_hidden_dim: int = 256,
        position_dim: int = 128,
    ) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}.")
        self.encoder = UNetEncoder2d(in_channels, features, norm, negative_slope)
        n = self.encoder.num_levels
        self.level = _check_level(level, n, "level")
        self.position_level = _check_level(position_level, n, "position_level")
        self.embed_dim = embed_dim
        self.position_mode = _check_position_mode(position_mode)
        # PyTorch's default init for the heads, as for the projection head of PretrainNet2d
        self.embedding = nn.Conv2d(self.encoder.channels[self.level], embed_dim, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.position_head = PositionalHead(
            self.encoder.channels[self.position_level], position_hidden_dim, position_mode, position_dim
        )

    def forward(self, x_i: torch.Tensor, x_j: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x_i: first slices of the pairs, (B, in_channels, H, W), H and W at least 16.
            x_j: second slices, same shape.

        Returns:
            dict with ``"embedding"``, ``"embedding_2"`` (B, embed_dim, h, w) and ``"position_pred"`` ((B, 2, D),
            (B,) or (B, 2)).

        Raises:
            ValueError: ``x_i`` and ``x_j`` differ in shape.
        """
        if x_i.shape != x_j.shape:
            raise ValueError(
                f"both slices of a pair must have the same shape, got {list(x_i.shape)} and {list(x_j.shape)}."
            )
        b = x_i.shape[0]
        levels = self.encoder(torch.cat([x_i, x_j], dim=0))
        emb = self.embedding(levels[self.level])
        pooled = torch.flatten(self.pool(levels[self.position_level]), 1)
        return {
            EMBEDDING_KEY: emb[:b],
            EMBEDDING_2_KEY: emb[b:],
            POSITION_PRED_KEY: self.position_head(pooled[:b], pooled[b:]),
        }

    def extra_repr(self) -> str:
        return (
            f"level={self.level}, position_level={self.position_level}, embed_dim={self.embed_dim}, "
            f"position_mode={self.position_mode!r}"
        )
