"""Networks shared by the bundles: PCL's 2D U-Net, its encoder, the projection head and encoder-only loading.

- :class:`UNetEncoder2d`: 4 levels + centre block; ``forward`` returns the 5 level features, shallow to deep.
- :class:`UNet2d`: encoder + decoder + 1x1 head, the fine-tuning (segmentation) network.
- :class:`ProjectionHead`, :class:`PretrainNet2d`: the pretraining network (encoder + projection head).
- :func:`load_encoder_weights`, :func:`with_encoder_weights`: copy a pretrained encoder into a network.
- :func:`freeze_encoder`: freeze the encoder (no gradient, eval mode) for decoder-only fine-tuning.
"""

from __future__ import annotations

from .checkpoint import (
    DEFAULT_STATE_KEYS,
    PRETRAIN_HINT,
    extract_state_dict,
    load_encoder_weights,
    with_encoder_weights,
    with_weights,
)
from .freeze import freeze_encoder
from .heads import PretrainNet2d, ProjectionHead
from .unet2d import (
    UNET2D_DIVISOR,
    ConvNormAct2d,
    DoubleConv2d,
    UNet2d,
    UNetDecoder2d,
    UNetEncoder2d,
    UNetUpBlock2d,
    init_kaiming_normal,
)

__all__ = [
    "DEFAULT_STATE_KEYS",
    "UNET2D_DIVISOR",
    "ConvNormAct2d",
    "DoubleConv2d",
    "PretrainNet2d",
    "ProjectionHead",
    "UNet2d",
    "UNetDecoder2d",
    "UNetEncoder2d",
    "UNetUpBlock2d",
    "extract_state_dict",
    "freeze_encoder",
    "init_kaiming_normal",
    "load_encoder_weights",
    "with_encoder_weights",
    "with_weights",
    "PRETRAIN_HINT",
]

from .sal import PositionalHead, SalPretrainNet2d  # noqa: E402

__all__ += ["PositionalHead", "SalPretrainNet2d"]

from .crln import CRLNNet, RepresentationHead3d  # noqa: E402
from .dim import DIMStage, DynamicInteractionModule  # noqa: E402
from .vnet import VNET_DIVISOR, UNet3dCRLN, VNet  # noqa: E402

__all__ += [
    "CRLNNet",
    "DIMStage",
    "DynamicInteractionModule",
    "RepresentationHead3d",
    "UNet3dCRLN",
    "VNET_DIVISOR",
    "VNet",
]
