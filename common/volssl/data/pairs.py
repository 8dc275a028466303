"""Pairs of nearby slices of one volume, for SAL's alignment pretraining.

:class:`SlicePairDataset` is a :class:`~volssl.data.slices.SliceDataset` (same caching, ``volume_transform`` and
per-slice ``slice_transform``) whose item ``n`` is a pair: slice ``n`` as the anchor and a partner slice drawn at
random from the SAME volume within the position threshold ``t``::

    |p_i - p_j| <= t,   j != i,   p = (index + 1) / S

The anchor and the partner go through ``slice_transform`` independently (two successive random draws), e.g.
:func:`volssl.data.augment.pretrain_view_transform`; with ``shared_augmentation=True`` the transform is applied once
to the pair (keys ``image`` and ``image_2``), so both slices get the same crop, flips and spatial transform and a
location of one slice still faces the same location of the other (what SAL's windowed local alignment compares).
Shuffling the items in a ``DataLoader`` gives batches of pairs from many volumes, each pair from one volume: with V
volumes of about equal size, a batch of B pairs holds about ``V (1 - (1 - 1/V)^B)`` different volumes (25 of 62 for
B = 32), which the cross-subject global positional loss of SAL relies on.

Volumes where no other slice lies within ``t`` (``t < 1/S``, or ``S == 1``) are paired as follows (the dataset warns
once, at construction, with the number of such volumes):

- ``t < 1/S`` (``S >= 2``): the partner is a nearest neighbour (``|i - j| == 1``, drawn at random between the two
  neighbours of an inner slice); the pair is then farther apart than ``t``;
- ``S == 1``: the slice is paired with itself (two independent augmentations of one slice; the positional target
  ``p_j - p_i`` is 0).

The same rule applies to the slices kept by ``skip_empty_label``: partners are drawn among the kept slices of the
volume (the nearest kept one when none is within ``t``; the anchor itself when it is the only one kept).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Randomizable, apply_transform
from monai.utils import convert_to_tensor

from .datalist import IMAGE_KEY, LABEL_KEY
from .slices import CASE_KEY, POSITION_KEY, SLICE_INDEX_KEY, SliceDataset

__all__ = ["PAIR_SUFFIX", "SlicePairDataset", "max_slice_offset", "partner_candidates", "sparse_volume_message"]

#: Appended to the keys of the partner slice: ``image_2``, ``position_2``, ``slice_index_2``.
PAIR_SUFFIX = "_2"

# Positions are k/S: compare slice offsets |i - j| <= t*S with a tolerance instead of float position differences,
# which put e.g. |0.4 - 0.3| just above t = 0.1.
_OFFSET_TOLERANCE = 1e-6


def max_slice_offset(threshold: float, num_slices: int) -> int:
    """The largest slice offset ``k`` with ``k / S <= threshold``: ``floor(threshold * S)`` (with a 1e-6 tolerance).

    Args:
        threshold: ``t``, the largest position difference of a pair (normalised positions, in [0, 1]).
        num_slices: ``S``.

    Returns:
        ``k >= 0``; pairs within the threshold are the slices ``j != i`` with ``|i - j| <= k``.
    """
    return int(math.floor(threshold * num_slices + _OFFSET_TOLERANCE))


def partner_candidates(anchor: int, kept: Sequence[int] | np.ndarray, max_offset: int) -> np.ndarray:
    """The slice indices a partner of ``anchor`` is drawn from (uniformly), following the module's rules.

    Args:
        anchor: slice index of the anchor (one of ``kept``).
        kept: sorted slice indices of the volume that may be partners (all slices, or those kept by a filter).
        max_offset: the largest allowed ``|anchor - j|`` (see :func:`max_slice_offset`).

    Returns:
        the ``j != anchor`` of ``kept`` with ``|anchor - j| <= max_offset``; if there is none, the ``j != anchor`` of
        ``kept`` nearest to the anchor (one, or two at equal distance); if ``kept`` holds the anchor only, ``[anchor]``.
    """
    kept = np.asarray(kept, dtype=np.int64)
    others = kept[kept != anchor]
    if others.size == 0:
        return np.asarray([anchor], dtype=np.int64)
    gap = np.abs(others - anchor)
    within = others[gap <= max_offset]
    return within if within.size else others[gap == gap.min()]


def sparse_volume_message(kept_slices: Sequence[np.ndarray], max_offsets: Sequence[int], threshold: float) -> str:
    """The warning for volumes where some slice has no partner within the threshold ('' when there is none).

    Args:
        kept_slices: per volume, the sorted slice indices that are items.
        max_offsets: per volume, the largest allowed offset (:func:`max_slice_offset`).
        threshold: ``t``, for the message.
    """
    alone, beyond = 0, 0
    for kept, k in zip(kept_slices, max_offsets):
        kept = np.asarray(kept)
        if kept.size == 1:
            alone += 1
        elif kept.size > 1:
            gaps = np.diff(kept)
            inf = np.asarray([np.iinfo(np.int64).max])
            nearest = np.minimum(np.concatenate([inf, gaps]), np.concatenate([gaps, inf]))
            beyond += bool(np.any(nearest > k))
    if not (alone or beyond):
        return ""
    return (
        f"(threshold={threshold}): {beyond} volume(s) have slices with no partner within the threshold (paired with "
        f"their nearest neighbour instead) and {alone} volume(s) have a single slice (paired with itself)."
    )


class SlicePairDataset(SliceDataset, Randomizable):
    """One item per slice: the slice (anchor) and a random partner slice of the same volume within ``threshold``.

    Item ``n``: the anchor's dict as :class:`~volssl.data.slices.SliceDataset` gives it (``image`` (C, H, W) after
    ``slice_transform``, ``position``, ``slice_index``, ``num_slices``, ``volume_index``, ``case``, ...) plus the
    partner's ``image_2`` (independently augmented), ``position_2`` and ``slice_index_2`` (for every key in ``keys``
    the partner's array is stored under ``key + "_2"``). Arrays under ``keys`` and their ``_2`` twins are plain
    ``torch.Tensor`` (metadata dropped, as ``EnsureTyped(track_meta=False)``), so batches collate although the two
    slices carry different transform histories. See the module docstring for the pairing rules of volumes with
    too few slices.

    Determinism: :meth:`set_random_state` seeds the partner draws and, with a seed derived from it,
    ``slice_transform``; MONAI's ``DataLoader`` calls it in the main process and in every worker, so
    ``monai.utils.set_determinism`` + ``monai.data.DataLoader`` reproduce the pairs and their augmentation; direct
    indexing needs ``seed=...`` or :meth:`set_random_state` first.

    Args:
        data: the volume entries (see :class:`~volssl.data.slices.SliceDataset`).
        volume_transform: deterministic per-volume transform.
        slice_transform: per-slice transform (usually random), applied to the anchor and to the partner separately;
            it must return one dict. With ``shared_augmentation``: applied once to the pair dict, so it must transform
            ``key`` and ``key + "_2"`` for every key in ``keys`` (e.g. ``pretrain_view_transform(keys=["image",
            "image_2"])``: MONAI's dictionary transforms draw once per call for all their keys).
        threshold: ``t``, the largest position difference ``|p_i - p_j|`` of a pair (0.1 by default).
        slice_axis: the spatial axis to slice along.
        cache: keep the preprocessed slices in memory.
        keys: the keys holding volumes to slice (each gets a partner twin ``key + "_2"``).
        num_workers: threads loading the volumes at construction.
        skip_empty_label: keep only slices with foreground as anchors and partners.
        label_key: the label key, for ``skip_empty_label``.
        allow_missing_keys: do not raise when an entry lacks one of ``keys``.
        copy_cache: deep-copy the cached slices before ``slice_transform``.
        case_key: where to store the case name (see :class:`~volssl.data.slices.SliceDataset`).
        progress: show a progress bar while caching.
        seed: seed of the partner draws and of ``slice_transform`` (:meth:`set_random_state`); ``None``: unseeded.
        shared_augmentation: one draw of ``slice_transform`` for both slices of a pair (see above), instead of one
            each.

    Raises:
        ValueError: ``threshold`` outside [0, 1].
        VolsslInputError: see :class:`~volssl.data.slices.SliceDataset`.
    """

    def __init__(
        self,
        data: Sequence[Mapping],
        volume_transform: Callable | None = None,
        slice_transform: Callable | None = None,
        threshold: float = 0.1,
        slice_axis: int = -1,
        cache: bool = True,
        keys: KeysCollection = (IMAGE_KEY,),
        num_workers: int | None = 1,
        skip_empty_label: bool = False,
        label_key: str = LABEL_KEY,
        allow_missing_keys: bool = False,
        copy_cache: bool = True,
        case_key: str | None = CASE_KEY,
        progress: bool = False,
        seed: int | None = None,
        shared_augmentation: bool = False,
    ) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a normalised position difference in [0, 1], got {threshold}.")
        super().__init__(
            data,
            volume_transform=volume_transform,
            slice_transform=slice_transform,
            slice_axis=slice_axis,
            cache=cache,
            keys=keys,
            num_workers=num_workers,
            skip_empty_label=skip_empty_label,
            label_key=label_key,
            allow_missing_keys=allow_missing_keys,
            copy_cache=copy_cache,
            case_key=case_key,
            progress=progress,
        )
        self.threshold = float(threshold)
        self.shared_augmentation = bool(shared_augmentation)
        # an instance RNG (Randomizable's class-level default would be shared by every instance)
        self.R = np.random.RandomState()
        if seed is not None:
            self.set_random_state(seed=seed)
        kept: list[list[int]] = [[] for _ in self.num_slices]
        for v, s in self.index:
            kept[v].append(s)
        #: sorted slice indices of each volume that are items (all slices unless ``skip_empty_label``)
        self.kept_slices: list[np.ndarray] = [np.asarray(sorted(k), dtype=np.int64) for k in kept]
        #: the largest allowed slice offset of each volume (:func:`max_slice_offset`)
        self.max_offsets: list[int] = [max_slice_offset(self.threshold, s) for s in self.num_slices]
        self._warn_sparse_volumes()

    def _warn_sparse_volumes(self) -> None:
        """One warning for all volumes where some anchor has no partner within the threshold."""
        message = sparse_volume_message(self.kept_slices, self.max_offsets, self.threshold)
        if message:
            warnings.warn(f"SlicePairDataset {message}", stacklevel=3)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> SlicePairDataset:
        """Seed the partner draws and ``slice_transform`` (called by MONAI's ``DataLoader`` through ``set_rnd``).

        With ``seed``, the partner RNG gets ``seed`` and ``slice_transform`` a seed drawn from it (so the two streams
        differ); with ``state``, both share that ``RandomState``.
        """
        Randomizable.set_random_state(self, seed=seed, state=state)
        if self.slice_transform is not None and hasattr(self.slice_transform, "set_random_state"):
            if seed is not None:
                self.slice_transform.set_random_state(seed=int(self.R.randint(np.iinfo(np.int32).max)))
            else:
                self.slice_transform.set_random_state(state=state)
        return self

    def randomize(self, data: tuple[int, int]) -> int:
        """Draw the partner slice index of the anchor ``data = (volume_index, slice_index)`` with ``self.R``."""
        volume, anchor = data
        candidates = partner_candidates(anchor, self.kept_slices[volume], self.max_offsets[volume])
        return int(candidates[self.R.randint(candidates.size)]) if candidates.size > 1 else int(candidates[0])

    def _augment(self, item: dict) -> dict:
        if self.slice_transform is None:
            return item
        out = apply_transform(self.slice_transform, item)
        if not isinstance(out, Mapping):
            raise TypeError(f"slice_transform must return one dict per slice, got {type(out).__name__}")
        return dict(out)

    def _plain(self, value: Any) -> Any:
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return convert_to_tensor(value, track_meta=False)
        return value

    def _transform(self, index: int) -> dict:
        volume, anchor = self.index[index]
        partner = self.randomize((volume, anchor))
        first = self.get_slice(volume, anchor)
        second = self.get_slice(volume, partner)
        if not self.shared_augmentation:
            first, second = self._augment(first), self._augment(second)
        out = dict(first)
        for key in self.keys:
            if key in second:
                out[f"{key}{PAIR_SUFFIX}"] = second[key]
        out[f"{POSITION_KEY}{PAIR_SUFFIX}"] = second[POSITION_KEY]
        out[f"{SLICE_INDEX_KEY}{PAIR_SUFFIX}"] = second[SLICE_INDEX_KEY]
        if self.shared_augmentation:
            out = self._augment(out)  # one draw for both slices
        for key in self.keys:
            for name in (key, f"{key}{PAIR_SUFFIX}"):
                if name in out:
                    out[name] = self._plain(out[name])
        return out
