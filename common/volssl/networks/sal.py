"""The SAL pretraining network: PCL's 2D encoder, a 1x1 embedding for local alignment and a positional head.

SAL (self-supervised alignment learning, arXiv 2406.15699) has no public code; this is a reconstruction. A pair of
nearby slices ``(S_i, S_j)`` of one volume goes through the shared :class:`~volssl.networks.UNetEncoder2d`:

- local alignment: the level-``level`` feature maps (default the bottleneck) go through a 1x1 conv embedding ``E``;
  :class:`volssl.losses.LocalAlignmentLoss` L2-normalises them per location and aligns them;
- global position: the level-``position_level`` feature maps (default the bottleneck) are globally average-pooled
  and a small MLP (:class:`PositionalHead`) predicts the signed offset ``p_j - p_i`` from the concatenated pooled
  features (``"relative"``, the default), or each slice's own position ``p`` (``"absolute"``);
  :class:`volssl.losses.GlobalPositionalLoss` regresses it with an MSE.

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

EMBEDDING_KEY = "embedding"
"""Output key of the embedded feature map of the first slice, (B, embed_dim, h, w)."""
EMBEDDING_2_KEY = "embedding_2"
"""Output key of the embedded feature map of the second slice, (B, embed_dim, h, w)."""
POSITION_PRED_KEY = "position_pred"
"""Output key of the positional prediction: (B,) for ``"relative"``, (B, 2) for ``"absolute"``."""
POSITION_MODES = ("relative", "absolute")


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
    """MLP on globally pooled features predicting slice positions: ``Linear -> ReLU -> Linear(1)``.

    - ``"relative"``: input ``concat(g_i, g_j)`` (B, 2C) -> predicted offset ``p_j - p_i``, shape (B,). The
      concatenation is ordered, so the head can tell the sign of the offset.
    - ``"absolute"``: the same MLP on each slice alone, ``g`` (B, C) -> ``p``; for a pair it returns
      ``stack(p_i_hat, p_j_hat)``, shape (B, 2).

    The linear layers keep PyTorch's default initialisation (as :class:`~volssl.networks.ProjectionHead`).

    Args:
        in_channels: ``C``, channels of one pooled feature vector.
        hidden_dim: width of the hidden layer.
        mode: ``"relative"`` or ``"absolute"``.

    Raises:
        ValueError: a non-positive size or an unknown ``mode``.
    """

    def __init__(self, in_channels: int, hidden_dim: int = 256, mode: str = "relative") -> None:
        super().__init__()
        if min(in_channels, hidden_dim) < 1:
            raise ValueError(f"sizes must be positive, got in_channels={in_channels}, hidden_dim={hidden_dim}.")
        self.mode = _check_position_mode(mode)
        self.in_channels = in_channels
        self.hidden_dim = hidden_dim
        mlp_in = 2 * in_channels if mode == "relative" else in_channels
        self.fc1 = nn.Linear(mlp_in, hidden_dim)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, 1)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))).squeeze(-1)

    def forward(self, g_i: torch.Tensor, g_j: torch.Tensor) -> torch.Tensor:
        """
        Args:
            g_i: pooled features of the first slices, (B, C).
            g_j: pooled features of the second slices, (B, C).

        Returns:
            ``"relative"``: predicted ``p_j - p_i``, (B,); ``"absolute"``: predicted ``(p_i, p_j)``, (B, 2).
        """
        if self.mode == "relative":
            return self._mlp(torch.cat([g_i, g_j], dim=1))
        return torch.stack([self._mlp(g_i), self._mlp(g_j)], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class SalPretrainNet2d(nn.Module):
    """SAL pretraining network: :class:`~volssl.networks.UNetEncoder2d` + 1x1 conv embedding + :class:`PositionalHead`.

    Both slices of a pair go through the encoder in one batch of 2B (so BatchNorm sees both, as in the two-view
    pretraining of CORAL). ``forward(x_i, x_j)`` returns a dict:

    - ``"embedding"``: ``E(F_level(x_i))``, (B, embed_dim, h, w), not normalised (the loss normalises per location);
    - ``"embedding_2"``: ``E(F_level(x_j))``, same shape;
    - ``"position_pred"``: (B,) predicted ``p_j - p_i`` (``"relative"``) or (B, 2) predicted ``(p_i, p_j)``
      (``"absolute"``), from the globally average-pooled level-``position_level`` features.

    ``(h, w)`` is the size of the chosen level: ``(H/16, W/16)`` for the bottleneck (see
    :class:`~volssl.networks.UNetEncoder2d`); the windowed local alignment needs it divisible by its window count.

    Parameters at ``in_channels=1`` and the defaults: 11,094,545 for ``features=48`` (encoder 10,602,384) and
    1,343,921 for ``features=16``.

    Args:
        in_channels: input image channels.
        features: base width ``f`` of the encoder.
        embed_dim: output channels of the 1x1 embedding ``E`` (128 by default).
        level: encoder level whose feature map is embedded for local alignment (-1: the bottleneck, 16f channels).
        position_mode: ``"relative"`` (default) or ``"absolute"``, see :class:`PositionalHead`.
        norm: normalisation of the encoder levels, see :class:`~volssl.networks.UNetEncoder2d`.
        negative_slope: LeakyReLU slope of the encoder.
        position_level: encoder level pooled for the positional head (-1: the bottleneck).
        position_hidden_dim: hidden width of the positional head.

    Raises:
        ValueError: a level outside the encoder's 5 levels, an unknown ``position_mode`` or a non-positive size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: int = 48,
        embed_dim: int = 128,
        level: int = -1,
        position_mode: str = "relative",
        norm: str | None = "batch",
        negative_slope: float = 0.01,
        position_level: int = -1,
        position_hidden_dim: int = 256,
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
            self.encoder.channels[self.position_level], position_hidden_dim, position_mode
        )

    def forward(self, x_i: torch.Tensor, x_j: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x_i: first slices of the pairs, (B, in_channels, H, W), H and W at least 16.
            x_j: second slices, same shape.

        Returns:
            dict with ``"embedding"``, ``"embedding_2"`` (B, embed_dim, h, w) and ``"position_pred"`` ((B,) or (B, 2)).

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
        return f"level={self.level}, position_level={self.position_level}, embed_dim={self.embed_dim}"
