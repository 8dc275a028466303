"""2D slice augmentation pipelines (MONAI ``Compose`` objects) for pretraining views and fine-tuning.

They mirror the augmentation of PCL/CORAL (batchgenerators in the released code):

1. random crop/pad to the patch: zero padding (centred) when the slice is smaller, then a random crop
   (``SpatialPadd`` -> ``RandSpatialCropd``);
2. mirror: each in-plane axis flipped with probability 0.5 (``RandFlipd`` x2);
3. with probability ``prob_spatial`` (0.67) a spatial transform about the patch centre: elastic deformation,
   rotation by an angle in [0, 2 pi) and an isotropic scale in [0.7, 1.3], zero outside the image
   (``Rand2DElasticd``; ``RandAffined`` when ``elastic=False``); otherwise the random crop of step 1 stands (the
   released code's alternative ``RandomCropTransform`` is a no-op on a patch-sized input).

Elastic parameters: batchgenerators draws a displacement field of uniform noise smoothed by a Gaussian (sigma 14..17
px) times alpha (100..350); MONAI's ``Rand2DElastic`` uses normal offsets on a control grid interpolated bicubically.
For ACDC's 352 x 352 patches, control points every 30 px with offsets of 1..3.5 px give the same RMS displacement
(about 3 px, measured) at a similar correlation length. Both are in pixels, so by default they are scaled with the
patch (:func:`elastic_parameters`: the spacing times ``sqrt(h w) / 352`` rounded to whole pixels, the offsets times
the same factor as the rounded spacing): a 64 x 64 patch gets control points every 5 px and offsets of 0.17..0.58 px,
the same deformation relative to the patch. Explicit ``elastic_spacing`` / ``elastic_magnitude`` values are used as
given, in pixels.

Deviations from the released code: MONAI draws the scale factor uniformly in ``scale_range`` (batchgenerators draws
below or above 1 with probability 1/2 each) and interpolates the image bicubically with ``grid_sample`` (cubic
spline of order 3 there); labels use nearest neighbour in both.

Every function returns a ``Compose`` and can be referenced from a bundle config, e.g.
``{"_target_": "volssl.data.augment.pretrain_view_transform", "patch_size": [64, 64]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import pi

import torch
from monai.config import KeysCollection
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    EnsureTyped,
    Rand2DElasticd,
    RandAffined,
    RandAffineGrid,
    RandFlipd,
    RandSpatialCropd,
    SpatialPadd,
)
from monai.utils import ensure_tuple

from .datalist import IMAGE_KEY, LABEL_KEY
from .slices import TwoViewsd

__all__ = [
    "ELASTIC_REFERENCE_PATCH",
    "IsotropicRandAffineGrid",
    "elastic_parameters",
    "pretrain_view_transform",
    "pretrain_slice_transform",
    "finetune_train_transform",
    "finetune_val_transform",
]


#: Patch side (ACDC, pixels) for which the default elastic spacing (30 px) and magnitude (1..3.5 px) are given.
ELASTIC_REFERENCE_PATCH = 352
_REFERENCE_SPACING = 30.0
_REFERENCE_MAGNITUDE = (1.0, 3.5)


def elastic_parameters(
    patch_size, elastic_spacing: Sequence[float] | float | None = None, elastic_magnitude: Sequence[float] | None = None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The control-point spacing (per axis) and the offset range of the elastic deformation, in pixels.

    ``None`` (the default) takes the values of the 352 x 352 reference patch (spacing 30 px, offsets 1..3.5 px) scaled
    for a patch of ``h x w``, so the deformation is the same fraction of the patch whatever its size (as the public
    code's ACDC setting, whose values are in pixels of 352-pixel patches): the spacing becomes
    ``round(30 sqrt(h w) / 352)`` pixels (at least 1) and the offsets are multiplied by ``spacing / 30``. The spacing
    is kept whole because MONAI up-samples the control grid by a factor it rounds to whole output sizes: a fractional
    spacing (5.45 px for 64 x 64) adds a zoom of about 1 % to the field, which at that size is half of its RMS
    displacement (measured). Given values are used as they are.

    Raises:
        ValueError: a non-positive spacing, or offsets that are not ``0 <= min <= max``.
    """
    h, w = _pair(patch_size, "patch_size")
    whole = float(max(1, round(_REFERENCE_SPACING * (h * w) ** 0.5 / ELASTIC_REFERENCE_PATCH)))
    scale = whole / _REFERENCE_SPACING
    if elastic_spacing is None:
        spacing = (whole, whole)
    else:
        sp = tuple(float(v) for v in ensure_tuple(elastic_spacing))
        spacing = sp * 2 if len(sp) == 1 else sp
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"elastic_spacing must be one or two positive numbers, got {elastic_spacing}")
    if elastic_magnitude is None:
        magnitude = (_REFERENCE_MAGNITUDE[0] * scale, _REFERENCE_MAGNITUDE[1] * scale)
    else:
        magnitude = tuple(float(m) for m in elastic_magnitude)
    if len(magnitude) != 2 or not 0 <= magnitude[0] <= magnitude[1]:
        raise ValueError(f"elastic_magnitude must be (min, max) offsets with 0 <= min <= max, got {elastic_magnitude}")
    return spacing, magnitude  # type: ignore[return-value]


class IsotropicRandAffineGrid(RandAffineGrid):
    """``RandAffineGrid`` with one scale factor for every spatial axis (the one drawn for the first axis).

    batchgenerators' ``SpatialTransform`` (used by PCL/CORAL) scales isotropically; MONAI draws one factor per axis,
    which also changes the aspect ratio.
    """

    def randomize(self, data=None) -> None:
        super().randomize(data)
        if self.scale_params:
            self.scale_params = [self.scale_params[0]] * len(self.scale_params)


def _pair(value, name: str) -> tuple[int, int]:
    out = tuple(int(v) for v in ensure_tuple(value))
    if len(out) == 1:
        out = out * 2
    if len(out) != 2 or any(v < 1 for v in out):
        raise ValueError(f"{name} must be one or two positive integers, got {value}")
    return out  # type: ignore[return-value]


def _rotate_range(rotate_range) -> tuple[tuple[float, float]]:
    """MONAI's 2D ``rotate_range`` from a number r (angle in [-r, r]) or a pair (lo, hi) (angle in [lo, hi])."""
    r = ensure_tuple(rotate_range)
    if len(r) == 1:
        return ((-abs(float(r[0])), abs(float(r[0]))),)
    if len(r) == 2:
        return ((float(r[0]), float(r[1])),)
    raise ValueError(f"rotate_range must be a number or a (min, max) pair in radians, got {rotate_range}")


def _scale_range(scale_range) -> tuple[tuple[float, float], tuple[float, float]]:
    """MONAI's 2D ``scale_range`` (offsets from 1) from multiplicative factors: (lo, hi), or s meaning (1-s, 1+s)."""
    s = ensure_tuple(scale_range)
    if len(s) == 1:
        lo, hi = 1.0 - float(s[0]), 1.0 + float(s[0])
    elif len(s) == 2:
        lo, hi = float(s[0]), float(s[1])
    else:
        raise ValueError(f"scale_range must be (min, max) scale factors, got {scale_range}")
    if not 0 < lo <= hi:
        raise ValueError(f"scale factors must satisfy 0 < min <= max, got {scale_range}")
    return ((lo - 1.0, hi - 1.0),) * 2


def _spatial_augmentation(
    keys: tuple,
    patch_size,
    prob_flip: float,
    prob_spatial: float,
    rotate_range,
    scale_range,
    elastic: bool,
    elastic_spacing,
    elastic_magnitude,
    isotropic_scale: bool,
    mode,
    padding_mode,
) -> list:
    """pad -> random crop -> flips -> (with ``prob_spatial``) elastic/rotation/scale about the patch centre."""
    patch = _pair(patch_size, "patch_size")
    rot, scale = _rotate_range(rotate_range), _scale_range(scale_range)
    xforms: list = [
        SpatialPadd(keys, spatial_size=patch, method="symmetric", mode="constant"),
        RandSpatialCropd(keys, roi_size=patch, random_center=True, random_size=False),
        RandFlipd(keys, prob=prob_flip, spatial_axis=0),
        RandFlipd(keys, prob=prob_flip, spatial_axis=1),
    ]
    if prob_spatial > 0:
        common = dict(
            spatial_size=patch,
            prob=prob_spatial,
            rotate_range=rot,
            scale_range=scale,
            mode=mode,
            padding_mode=padding_mode,
        )
        if elastic:
            spacing, magnitude = elastic_parameters(patch, elastic_spacing, elastic_magnitude)
            spatial = Rand2DElasticd(keys, spacing=spacing, magnitude_range=magnitude, **common)
            holder = spatial.rand_2d_elastic
        else:
            spatial = RandAffined(keys, **common)
            holder = spatial.rand_affine
        if isotropic_scale:
            old = holder.rand_affine_grid
            holder.rand_affine_grid = IsotropicRandAffineGrid(
                rotate_range=old.rotate_range, scale_range=old.scale_range, device=old.device, lazy=False
            )
        xforms.append(spatial)
    return xforms


def pretrain_view_transform(
    patch_size: Sequence[int] | int = (352, 352),
    keys: KeysCollection = (IMAGE_KEY,),
    prob_spatial: float = 0.67,
    rotate_range: float | Sequence[float] = (0.0, 2 * pi),
    scale_range: float | Sequence[float] = (0.7, 1.3),
    elastic: bool = True,
    elastic_spacing: Sequence[float] | float | None = None,
    elastic_magnitude: Sequence[float] | None = None,
    isotropic_scale: bool = True,
    prob_flip: float = 0.5,
    mode: str = "bicubic",
    padding_mode: str = "zeros",
) -> Compose:
    """The random augmentation of one pretraining view of a 2D slice (PCL/CORAL's pipeline).

    Wrap it in :class:`volssl.data.slices.TwoViewsd` (or use :func:`pretrain_slice_transform`) for the two
    independent views of CORAL/PCL/SimCLR.

    Args:
        patch_size: output spatial size ``(h, w)``; smaller slices are zero-padded (centred), larger ones cropped.
        keys: the image key(s), channel-first 2D arrays ``(C, H, W)``.
        prob_spatial: probability of the spatial transform (else only pad/crop and flips).
        rotate_range: rotation angle in radians: a pair ``(lo, hi)`` draws from [lo, hi]; a number r from [-r, r].
        scale_range: scale factors ``(lo, hi)`` (1 = no change; > 1 samples a wider field, i.e. zooms out), or a
            number s meaning ``(1 - s, 1 + s)``.
        elastic: elastic deformation together with the rotation and scale (``Rand2DElasticd``); ``False``: rotation
            and scale only (``RandAffined``).
        elastic_spacing: distance in pixels between the control points of the elastic field; ``None``: 30 px scaled
            with the patch (:func:`elastic_parameters`).
        elastic_magnitude: range of the control points' offsets in pixels (normal draws times a magnitude drawn
            uniformly from this range); ``None``: 1..3.5 px scaled with the patch.
        isotropic_scale: one scale factor for both axes (as in batchgenerators), else one per axis.
        prob_flip: probability of flipping each in-plane axis.
        mode: image interpolation (``"bicubic"``, ``"bilinear"``, ``"nearest"``).
        padding_mode: values outside the image after the spatial transform (``"zeros"`` as in the released code).

    Returns:
        a ``Compose``: ``{"image": (C, H, W)}`` -> ``{"image": (C, *patch_size)}`` (float MetaTensor).
    """
    keys = ensure_tuple(keys)
    return Compose(
        _spatial_augmentation(
            keys,
            patch_size,
            prob_flip,
            prob_spatial,
            rotate_range,
            scale_range,
            elastic,
            elastic_spacing,
            elastic_magnitude,
            isotropic_scale,
            mode,
            padding_mode,
        )
    )


def pretrain_slice_transform(
    patch_size: Sequence[int] | int = (352, 352), keys: KeysCollection = (IMAGE_KEY,), suffix: str = "_2", **view_kwargs
) -> Compose:
    """The per-slice transform of contrastive pretraining: two independent views of each slice.

    ``Compose([TwoViewsd(keys, pretrain_view_transform(patch_size, keys, **view_kwargs), suffix)])``: an item
    ``{"image": (1, H, W), "position": p, ...}`` becomes ``{"image": (1, h, w), "image_2": (1, h, w), "position": p,
    ...}`` with ``(h, w) = patch_size``.

    Args:
        patch_size: output spatial size of each view.
        keys: the image key(s).
        suffix: appended to each key for the second view.
        view_kwargs: further arguments of :func:`pretrain_view_transform`.

    Returns:
        a ``Compose`` holding one :class:`~volssl.data.slices.TwoViewsd`.
    """
    keys = ensure_tuple(keys)
    view = pretrain_view_transform(patch_size=patch_size, keys=keys, **view_kwargs)
    # plain tensors out: the two views carry different transform metadata, which MONAI cannot collate into a batch
    view_keys = list(keys) + [f"{k}{suffix}" for k in keys]
    return Compose([TwoViewsd(keys, view_transform=view, suffix=suffix), EnsureTyped(view_keys, track_meta=False)])


def finetune_train_transform(
    keys: KeysCollection = (IMAGE_KEY, LABEL_KEY),
    patch_size: Sequence[int] | int = (352, 352),
    label_key: str = LABEL_KEY,
    prob_spatial: float = 0.67,
    rotate_range: float | Sequence[float] = (0.0, 2 * pi),
    scale_range: float | Sequence[float] = (0.7, 1.3),
    elastic: bool = True,
    elastic_spacing: Sequence[float] | float | None = None,
    elastic_magnitude: Sequence[float] | None = None,
    isotropic_scale: bool = True,
    prob_flip: float = 0.5,
    mode: str | Sequence[str] | None = None,
    padding_mode: str = "zeros",
    label_dtype: torch.dtype = torch.int64,
) -> Compose:
    """The fine-tuning augmentation of a labelled 2D slice: the pretraining spatial pipeline applied jointly.

    The same crop, flips and spatial transform are applied to every key (MONAI's dictionary transforms draw once
    per call); the label is interpolated with nearest neighbour, padded with 0 (background) and cast back to
    ``label_dtype``, so its values stay in the original set.

    Args:
        keys: the image and label keys, channel-first 2D arrays ``(C, H, W)``.
        patch_size: output spatial size ``(h, w)``.
        label_key: the key interpolated as a label.
        prob_spatial, rotate_range, scale_range, elastic, elastic_spacing, elastic_magnitude, isotropic_scale,
            prob_flip, padding_mode: as in :func:`pretrain_view_transform`.
        mode: interpolation per key (``None``: ``"bicubic"`` for images, ``"nearest"`` for ``label_key``).
        label_dtype: dtype of the output label.

    Returns:
        a ``Compose``: ``{"image": (C, H, W), "label": (1, H, W)}`` -> same keys at ``patch_size``.
    """
    keys = ensure_tuple(keys)
    if mode is None:
        mode = tuple("nearest" if k == label_key else "bicubic" for k in keys)
    xforms = _spatial_augmentation(
        keys,
        patch_size,
        prob_flip,
        prob_spatial,
        rotate_range,
        scale_range,
        elastic,
        elastic_spacing,
        elastic_magnitude,
        isotropic_scale,
        mode,
        padding_mode,
    )
    if label_key in keys:
        xforms.append(EnsureTyped(label_key, dtype=label_dtype))
    return Compose(xforms)


def finetune_val_transform(
    keys: KeysCollection = (IMAGE_KEY, LABEL_KEY),
    patch_size: Sequence[int] | int | None = None,
    label_key: str = LABEL_KEY,
    label_dtype: torch.dtype = torch.int64,
) -> Compose:
    """Deterministic transform of validation slices: centred zero-pad + centre crop to ``patch_size`` (the released
    code's validation), or nothing but the label cast when ``patch_size`` is ``None`` (whole slices).

    Args:
        keys: the image and label keys, channel-first 2D arrays ``(C, H, W)``.
        patch_size: output spatial size, or ``None`` to keep the slice size.
        label_key: the label key (cast to ``label_dtype``).
        label_dtype: dtype of the output label.

    Returns:
        a ``Compose`` of deterministic transforms.
    """
    keys = ensure_tuple(keys)
    xforms: list = []
    if patch_size is not None:
        patch = _pair(patch_size, "patch_size")
        xforms += [
            SpatialPadd(keys, spatial_size=patch, method="symmetric", mode="constant"),
            CenterSpatialCropd(keys, roi_size=patch),
        ]
    if label_key in keys:
        xforms.append(EnsureTyped(label_key, dtype=label_dtype))
    return Compose(xforms)
