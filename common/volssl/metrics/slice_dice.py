"""Pooled-over-slices 2D Dice: the test metric of the slice-pretraining papers (PCL, CORAL).

Definition (the one of ``dewenzeng/positional_cl``, kept unchanged by its fork ``haoyiwang25/CORAL``): in
``metrics.py``, ``SegmentationMetric.update`` calls ``batch_intersection_union`` on every validation batch of 2D
slices and *adds* the per-class counts to running totals; ``SegmentationMetric.get`` then returns
``Dice_c = 2 * I_c / (eps + U_c + I_c)`` with ``eps = np.spacing(1)``, ``I_c`` the total intersection and
``U_c = P_c + L_c - I_c`` the total union of class ``c``, and the mean of ``Dice_c`` over the foreground classes
``1..C-1`` (``train_supervised.validate``). So, per foreground class ``c``::

    Dice_c = 2 * sum_s |P_s,c & L_s,c| / (sum_s |P_s,c| + sum_s |L_s,c|)

where ``s`` runs over all 2D slices (along the slice axis) of all the cases evaluated together. It is a
**sum-pooled** ratio, not a mean of per-slice Dice values: a slice where the class is absent from both prediction
and reference adds nothing to either sum (it is neither a 1 nor a 0, it simply does not count), and large slices
weigh more than small ones. As a consequence the value does not depend on the slice axis (it equals the Dice of the
voxel counts pooled over all cases); the axis only decides how the per-slice counts returned by
:func:`slice_counts` are laid out.

Differences from the released code, on purpose:

- inputs are label maps on the original grid (the released code scores the ``argmax`` of the network on slices
  centre-cropped or padded to the training patch size, so voxels outside the crop are not scored there);
- a class absent from every prediction and every reference slice scores ``empty_value`` (default 1.0, the volssl
  empty-case rule) where the released code's ``eps`` gives 0.0; pass ``empty_value=0.0`` to reproduce it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["slice_counts", "PooledSliceDice", "pooled_slice_dice"]


def slice_counts(pred: np.ndarray, label: np.ndarray, num_classes: int, axis: int = -1) -> np.ndarray:
    """Per-slice, per-foreground-class voxel counts of one case.

    Args:
        pred: predicted integer label map.
        label: reference integer label map of the same shape.
        num_classes: number of classes, background included.
        axis: the slice axis (default the last one, z in nibabel's (x, y, z) order).

    Returns:
        An int64 array of shape ``(n_slices, num_classes - 1, 3)`` holding, for slice ``s`` and class ``c``
        (index ``c - 1``), the intersection ``|P & L|``, the predicted count ``|P|`` and the reference count ``|L|``.

    Raises:
        ValueError: different shapes.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    axis = axis % pred.ndim
    pred, label = np.moveaxis(pred, axis, 0), np.moveaxis(label, axis, 0)
    other = tuple(range(1, pred.ndim))
    out = np.zeros((pred.shape[0], num_classes - 1, 3), dtype=np.int64)
    for c in range(1, num_classes):
        p, lab = pred == c, label == c
        out[:, c - 1, 0] = np.sum(p & lab, axis=other)
        out[:, c - 1, 1] = np.sum(p, axis=other)
        out[:, c - 1, 2] = np.sum(lab, axis=other)
    return out


class PooledSliceDice:
    """Accumulate slice counts over cases and return the pooled-over-slices Dice (see the module docstring).

    Example::

        acc = PooledSliceDice(num_classes=3, axis=-1)
        for pred, label in cases:
            acc.update(pred, label)
        per_class = acc.aggregate()  # shape (2,), classes 1 and 2

    Args:
        num_classes: number of classes, background included.
        axis: the slice axis of the label maps passed to :meth:`update`.
        empty_value: the Dice of a class with no voxel in any prediction or reference slice.
    """

    def __init__(self, num_classes: int, axis: int = -1, empty_value: float = 1.0):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background + one class), got {num_classes}")
        self.num_classes = int(num_classes)
        self.axis = int(axis)
        self.empty_value = float(empty_value)
        self.reset()

    def reset(self) -> None:
        """Forget all the counts."""
        self.intersection = np.zeros(self.num_classes - 1, dtype=np.int64)
        self.pred_total = np.zeros(self.num_classes - 1, dtype=np.int64)
        self.label_total = np.zeros(self.num_classes - 1, dtype=np.int64)
        self.n_slices = 0

    def update(self, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Add the slices of one case; returns its per-slice counts (see :func:`slice_counts`)."""
        counts = slice_counts(pred, label, self.num_classes, self.axis)
        self.intersection += counts[:, :, 0].sum(0)
        self.pred_total += counts[:, :, 1].sum(0)
        self.label_total += counts[:, :, 2].sum(0)
        self.n_slices += counts.shape[0]
        return counts

    def aggregate(self) -> np.ndarray:
        """The pooled Dice of each foreground class ``1..C-1``, a float array of length ``num_classes - 1``."""
        denom = self.pred_total + self.label_total
        out = np.full(self.num_classes - 1, self.empty_value, dtype=np.float64)
        nz = denom > 0
        out[nz] = 2.0 * self.intersection[nz] / denom[nz]
        return out


def pooled_slice_dice(
    preds: Iterable[np.ndarray],
    labels: Iterable[np.ndarray],
    num_classes: int,
    axis: int = -1,
    empty_value: float = 1.0,
) -> np.ndarray:
    """The pooled-over-slices Dice of a set of cases (see the module docstring).

    Args:
        preds: predicted integer label maps, one per case.
        labels: the reference label maps, in the same order.
        num_classes: number of classes, background included.
        axis: the slice axis.
        empty_value: the Dice of a class absent from every prediction and reference.

    Returns:
        The Dice of each foreground class ``1..C-1``; their mean is the number the papers report.
    """
    acc = PooledSliceDice(num_classes, axis=axis, empty_value=empty_value)
    for pred, label in zip(preds, labels, strict=True):
        acc.update(pred, label)
    return acc.aggregate()
