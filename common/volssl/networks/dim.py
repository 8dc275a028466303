"""CRLN's Dynamic Interaction Module (DIM): class prototypes that attend to decoder features and give the
rectification map M (arXiv 2502.11456).

Shapes: ``n`` classes, ``K`` prototypes per class (``nK = n * K`` in all), embedding ``E``, batch ``B``; a feature map
(B, C_s, h, w, d) has ``N = h * w * d`` voxels.

Per stage ``s`` (:class:`DIMStage`), with prototypes ``P`` (B, nK, E):

- tokens ``T = LayerNorm_E(conv1x1x1(F_s))`` flattened channels-last, (B, N, E). The LayerNorm normalises over the
  E channels of each voxel only, so the module works for any window size.
- single-head attention, prototype queries, voxel keys/values:
  ``S = (W_q LN(P)) (W_k T)^T / sqrt(E)``, (B, nK, N);
  ``P <- P + W_o softmax_N(S) (W_v T)`` (one residual), then ``P <- P + MLP(LN(P))`` (one residual).
- the attention maps, ``A = softmax over the nK prototypes of S`` (each voxel's soft assignment to the prototypes),
  reshaped class by class to (B n, K, h, w, d) (the class-major prototype order kept), go through a separable 3D conv
  ``depthwise 3x3x3 -> BatchNorm -> ReLU -> pointwise 1x1x1 -> BatchNorm -> ReLU`` and a 1x1x1 conv from the K maps
  to one cue map: the cue of each class, (B, n, h, w, d). Every class goes through the same convolutions (as the
  official code, which folds the classes into the batch axis).

Stages run from coarse to fine, each starting from the previous stage's prototypes; a stage's cue is added to the
next stage's cue after trilinear up-sampling by 2. The last cue is up-sampled to full resolution by a transposed
conv (kernel = stride = ``upsample``) followed by a ReLU (as the official code): the rectification map M >= 0,
(B, n, H, W, D).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DIMStage", "DynamicInteractionModule"]


class DIMStage(nn.Module):
    """One DIM stage: prototypes attend to one feature map, are updated, and give one cue map per class.

    See the module docstring for the formulas.

    Args:
        in_channels: channels ``C_s`` of the feature map.
        embed_dim: prototype / token dimension ``E``.
        num_classes: ``n``.
        num_prototypes: ``K`` per class.
        mlp_ratio: hidden width of the prototype MLP, as a multiple of ``E``.

    Raises:
        ValueError: a non-positive size.
    """

    def __init__(
        self, in_channels: int, embed_dim: int, num_classes: int, num_prototypes: int, mlp_ratio: float = 2.0
    ) -> None:
        super().__init__()
        hidden = int(round(embed_dim * mlp_ratio))
        if min(in_channels, embed_dim, num_classes, num_prototypes, hidden) < 1:
            raise ValueError(
                f"sizes must be positive, got in_channels={in_channels}, embed_dim={embed_dim}, "
                f"num_classes={num_classes}, num_prototypes={num_prototypes}, mlp hidden={hidden}."
            )
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.scale = 1.0 / math.sqrt(embed_dim)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=1)
        self.token_norm = nn.LayerNorm(embed_dim)
        self.query_norm = nn.LayerNorm(embed_dim)
        self.to_q = nn.Linear(embed_dim, embed_dim)
        self.to_k = nn.Linear(embed_dim, embed_dim)
        self.to_v = nn.Linear(embed_dim, embed_dim)
        self.to_out = nn.Linear(embed_dim, embed_dim)
        self.mlp_norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        k = num_prototypes
        # the separable conv of the official code: no conv biases (each conv is followed by a BatchNorm)
        self.separable = nn.Sequential(
            OrderedDict(
                depthwise=nn.Conv3d(k, k, kernel_size=3, padding=1, groups=k, bias=False),
                bn_depth=nn.BatchNorm3d(k),
                act_depth=nn.ReLU(inplace=True),
                pointwise=nn.Conv3d(k, k, kernel_size=1, bias=False),
                bn_point=nn.BatchNorm3d(k),
                act_point=nn.ReLU(inplace=True),
            )
        )
        self.to_cue = nn.Conv3d(k, 1, kernel_size=1)

    def forward(self, feature: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            feature: (B, C_s, h, w, d).
            prototypes: (B, nK, E), class-major (prototype ``k`` of class ``c`` at ``c * K + k``).

        Returns:
            ``(cue, prototypes)``: (B, n, h, w, d) and the updated prototypes (B, nK, E).
        """
        b, _, h, w, d = feature.shape
        tokens = self.token_norm(self.proj(feature).flatten(2).transpose(1, 2))  # (B, N, E): channels last
        q = self.to_q(self.query_norm(prototypes))  # (B, nK, E)
        k = self.to_k(tokens)
        v = self.to_v(tokens)
        scores = torch.bmm(q, k.transpose(1, 2)) * self.scale  # (B, nK, N)
        prototypes = prototypes + self.to_out(torch.bmm(scores.softmax(dim=-1), v))
        prototypes = prototypes + self.mlp(self.mlp_norm(prototypes))
        # N was flattened from (h, w, d); the nK maps are class-major, so each class's K maps are one batch item
        maps = scores.softmax(dim=1).reshape(b * self.num_classes, self.num_prototypes, h, w, d)
        cue = self.to_cue(self.separable(maps)).reshape(b, self.num_classes, h, w, d)
        return cue, prototypes


class DynamicInteractionModule(nn.Module):
    """CRLN's DIM: ``K`` learnable prototypes per class attend, stage by stage, to decoder features and give the
    rectification map M.

    See the module docstring for the formulas. The prototypes are learnable parameters (``n, K, E``), initialised
    from a truncated normal (std 0.02) and shared by the batch; each sample updates its own copy.

    Args:
        in_channels: channels of the feature maps, coarse to fine (default: V-Net's 1/4 and 1/2 features, 64 and 32).
        num_classes: ``n``.
        num_prototypes: ``K`` per class (16 for LA).
        embed_dim: ``E``.
        mlp_ratio: hidden width of the prototype MLPs, as a multiple of ``E``.
        upsample: factor from the last feature map to the output resolution (2 for a 1/2-resolution map).

    Raises:
        ValueError: no stage, or a non-positive size.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (64, 32),
        num_classes: int = 2,
        num_prototypes: int = 16,
        embed_dim: int = 16,
        mlp_ratio: float = 2.0,
        upsample: int = 2,
    ) -> None:
        super().__init__()
        if len(in_channels) < 1:
            raise ValueError("in_channels must name at least one feature map.")
        if min(num_classes, num_prototypes, embed_dim, upsample) < 1:
            raise ValueError(
                f"sizes must be positive, got num_classes={num_classes}, num_prototypes={num_prototypes}, "
                f"embed_dim={embed_dim}, upsample={upsample}."
            )
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.embed_dim = embed_dim
        self.num_stages = len(in_channels)
        self.prototypes = nn.Parameter(torch.empty(num_classes, num_prototypes, embed_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        self.stages = nn.ModuleList(
            [DIMStage(c, embed_dim, num_classes, num_prototypes, mlp_ratio) for c in in_channels]
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose3d(num_classes, num_classes, kernel_size=upsample, stride=upsample), nn.ReLU()
        )

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features: the feature maps, coarse to fine, ``features[s]`` (B, C_s, ...), each twice the size of the
                previous one; the last at 1/``upsample`` of the output resolution.

        Returns:
            ``(M, prototypes)``: the rectification map (B, n, H, W, D), non-negative, and the updated prototypes
            (B, n, K, E).

        Raises:
            ValueError: the number of feature maps differs from the number of stages.
        """
        if len(features) != self.num_stages:
            raise ValueError(f"DIM expects {self.num_stages} feature maps, got {len(features)}.")
        b = features[0].shape[0]
        protos = self.prototypes.reshape(1, -1, self.embed_dim).expand(b, -1, -1)
        cue = torch.zeros(0)  # placeholder, replaced by the first stage (keeps TorchScript's types simple)
        for i, stage in enumerate(self.stages):
            stage_cue, protos = stage(features[i], protos)
            if i > 0:
                stage_cue = stage_cue + F.interpolate(cue, scale_factor=2.0, mode="trilinear", align_corners=False)
            cue = stage_cue
        rect_map = self.upsample(cue)
        return rect_map, protos.reshape(b, self.num_classes, self.num_prototypes, self.embed_dim)
