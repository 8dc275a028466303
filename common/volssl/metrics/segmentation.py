"""Per-case, per-class 3D segmentation metrics: Dice, Jaccard, HD95 and ASD.

All metrics are computed for the foreground classes ``1..C-1`` of two integer label maps (prediction and reference)
on the same voxel grid, with MONAI's implementations on one-hot masks:

- **Dice** ``2|P & L| / (|P| + |L|)`` (``monai.metrics.compute_dice``).
- **Jaccard** ``|P & L| / |P | L|`` (``monai.metrics.compute_iou``).
- **HD95** (``monai.metrics.compute_hausdorff_distance(percentile=95)``): the surfaces are the edge voxels of each
  mask (the mask minus its binary erosion, scipy's default 6-connected structure). For every edge voxel of the
  prediction the Euclidean distance to the nearest edge voxel of the reference is taken, and vice versa; the 95th
  percentile of each of the two *directed* sets is computed (``torch.quantile``, linear interpolation) and HD95 is
  the **maximum of the two directed 95th percentiles**. medpy's ``hd95`` differs: it pools both directed sets and
  takes one 95th percentile of the pooled distances, so its values can be lower.
- **ASD** (``monai.metrics.compute_average_surface_distance(symmetric=True)``): the symmetric average surface
  distance, the mean of all the distances of both directed sets pooled together (edge voxels of the prediction to
  the reference surface and edge voxels of the reference to the prediction surface).

Distances are reported twice: in millimetres (``*_mm``, with the voxel spacing, e.g. from the NIfTI affine) and in
voxels (``*_vox``, spacing 1, the unit of most semi-supervised papers).

Empty-case rule (no NaN ever reaches a mean). For each foreground class, with ``P`` the predicted mask and ``L`` the
reference mask:

- ``"none"``: both non-empty; the metrics are MONAI's.
- ``"both_empty"``: neither the prediction nor the reference holds the class: Dice 1, Jaccard 1, HD95 0, ASD 0.
- ``"pred_empty"`` / ``"label_empty"``: exactly one of the two is empty (a missed class, or a false-positive class):
  Dice 0, Jaccard 0, and HD95 = ASD = the cap, the diagonal of the image box: ``sqrt(sum_i (n_i * s_i)^2)`` in mm
  with the shape ``n`` and spacing ``s``, and ``sqrt(sum_i n_i^2)`` in voxels. No distance between two voxels of the
  image reaches this cap, so a capped value is always the worst value possible for that image.

The rule applied is recorded per case and class in the ``empty_rule`` field of each row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

__all__ = [
    "METRIC_KEYS",
    "EMPTY_RULES",
    "HD95_DEFINITION",
    "ASD_DEFINITION",
    "image_diagonal",
    "one_hot",
    "empty_rule",
    "compute_case_metrics",
]

#: the metric columns of a per-case row, in reporting order
METRIC_KEYS = ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox")
#: the values of the ``empty_rule`` field
EMPTY_RULES = ("none", "both_empty", "pred_empty", "label_empty")
HD95_DEFINITION = (
    "MONAI compute_hausdorff_distance(percentile=95): maximum of the two directed 95th percentiles of the "
    "edge-voxel to nearest-edge-voxel Euclidean distances (medpy instead takes the 95th percentile of both "
    "directed sets pooled)"
)
ASD_DEFINITION = (
    "MONAI compute_average_surface_distance(symmetric=True): mean of the edge-voxel to nearest-edge-voxel "
    "Euclidean distances of both directions pooled together"
)


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """The diagonal of the image box, the cap for distances of a case with exactly one empty mask.

    Args:
        shape: the spatial shape ``(n_x, n_y, n_z)``.
        spacing: the voxel spacing in mm; ``None`` gives the diagonal in voxels.

    Returns:
        ``sqrt(sum_i (n_i * s_i)^2)``.
    """
    spacing = [1.0] * len(shape) if spacing is None else list(spacing)
    if len(spacing) != len(shape):
        raise ValueError(f"spacing {tuple(spacing)} does not match the {len(shape)} dimensions of shape {tuple(shape)}")
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def one_hot(label: np.ndarray, num_classes: int) -> torch.Tensor:
    """One-hot encode an integer label map to a ``(1, num_classes, *spatial)`` float tensor (MONAI's layout).

    Args:
        label: integer label map with values in ``0..num_classes-1``.
        num_classes: the number of classes, background included.

    Returns:
        A float32 tensor with a batch dimension of 1.
    """
    lab = torch.as_tensor(np.asarray(label, dtype=np.int64))
    out = torch.nn.functional.one_hot(lab, num_classes)  # (*spatial, C)
    return out.movedim(-1, 0)[None].float()


def empty_rule(pred_voxels: int, label_voxels: int) -> str:
    """Which empty-case rule applies to a class with the given voxel counts (see the module docstring)."""
    if pred_voxels > 0 and label_voxels > 0:
        return "none"
    if pred_voxels == 0 and label_voxels == 0:
        return "both_empty"
    return "pred_empty" if pred_voxels == 0 else "label_empty"


def _mask(label: np.ndarray, c: int, dtype: torch.dtype) -> torch.Tensor:
    """The binary mask of class ``c`` as a ``(1, 1, *spatial)`` tensor (one channel of the one-hot encoding)."""
    return torch.as_tensor(np.asarray(label) == c)[None, None].to(dtype)


def _distances(pred_mask: torch.Tensor, label_mask: torch.Tensor, spacing) -> tuple[float, float]:
    """HD95 and symmetric ASD of two non-empty binary masks (MONAI, see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd = compute_hausdorff_distance(pred_mask, label_mask, include_background=True, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(
            pred_mask, label_mask, include_background=True, symmetric=True, spacing=spacing
        )
    return float(hd[0, 0]), float(asd[0, 0])


def _overlap(pred_mask: torch.Tensor, label_mask: torch.Tensor) -> tuple[float, float]:
    """Dice and Jaccard of two binary masks with at least one non-empty (MONAI, float64)."""
    dice = compute_dice(pred_mask, label_mask, include_background=True, ignore_empty=False)
    iou = compute_iou(pred_mask, label_mask, include_background=True, ignore_empty=False)
    return float(dice[0, 0]), float(iou[0, 0])


def compute_case_metrics(
    pred: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
) -> list[dict]:
    """Dice, Jaccard, HD95 and ASD of one case, for each foreground class, with the empty-case rule applied.

    The classes are scored one at a time on their binary masks (the channels of the one-hot encoding), so memory
    stays at a few copies of the volume whatever the number of classes.

    Args:
        pred: predicted integer label map, values in ``0..num_classes-1``.
        label: reference integer label map on the same grid.
        num_classes: number of classes, background included (the foreground classes are ``1..num_classes-1``).
        spacing: voxel spacing in mm for the ``*_mm`` distances (``None``: 1 mm, the ``*_mm`` and ``*_vox`` columns
            are then equal).
        class_names: names by class index (a mapping or a sequence indexed by class); default ``"class_<i>"``.

    Returns:
        One dict per foreground class with ``class_index``, ``class_name``, the :data:`METRIC_KEYS`,
        ``empty_rule``, ``pred_voxels``, ``label_voxels``, ``cap_mm`` and ``cap_vox``. No value is NaN.

    Raises:
        ValueError: different shapes, fewer than 2 classes, or values outside ``0..num_classes-1``.
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background + one class), got {num_classes}")
    for name, arr in (("prediction", pred), ("label", label)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} values must lie in 0..{num_classes - 1}, got {arr.min()}..{arr.max()}")
    spacing = None if spacing is None else [float(s) for s in spacing]
    cap_mm, cap_vox = image_diagonal(pred.shape, spacing), image_diagonal(pred.shape)
    rows = []
    for c in range(1, num_classes):
        pm, lm = _mask(pred, c, torch.float64), _mask(label, c, torch.float64)
        n_pred, n_label = int(pm.sum()), int(lm.sum())
        rule = empty_rule(n_pred, n_label)
        row: dict = {"class_index": c, "class_name": _class_name(class_names, c)}
        if rule == "none":
            row["dice"], row["jaccard"] = _overlap(pm, lm)
            pm, lm = pm.float(), lm.float()
            row["hd95_mm"], row["asd_mm"] = _distances(pm, lm, spacing)
            row["hd95_vox"], row["asd_vox"] = _distances(pm, lm, None)
        elif rule == "both_empty":
            row.update(dice=1.0, jaccard=1.0, hd95_mm=0.0, asd_mm=0.0, hd95_vox=0.0, asd_vox=0.0)
        else:
            row.update(dice=0.0, jaccard=0.0, hd95_mm=cap_mm, asd_mm=cap_mm, hd95_vox=cap_vox, asd_vox=cap_vox)
        row.update(empty_rule=rule, pred_voxels=n_pred, label_voxels=n_label, cap_mm=cap_mm, cap_vox=cap_vox)
        rows.append(row)
    return rows


def _class_name(class_names, c: int) -> str:
    if class_names is None:
        return f"class_{c}"
    if isinstance(class_names, Mapping):
        return str(class_names.get(c, class_names.get(str(c), f"class_{c}")))
    return str(class_names[c]) if c < len(class_names) else f"class_{c}"
