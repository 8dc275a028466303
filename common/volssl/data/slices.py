"""The slice data pipeline: 3D volumes in, 2D slices (with their normalised position) out.

The slice methods (CORAL, SAL, PCL, ...) pretrain a 2D encoder on the slices of unlabelled 3D volumes and fine-tune a
2D U-Net on the slices of a few labelled ones. The pipeline, in MONAI's terms:

1. ``volume_transform``: deterministic per-volume loading and preprocessing (:func:`volume_transform` builds
   ``LoadImaged`` -> ``EnsureChannelFirstd`` -> optional in-plane ``Spacingd`` -> type casts -> per-volume intensity
   normalisation). Each volume is loaded once and, with ``cache=True``, kept in memory.
2. :class:`ExtractSlicesd`: one channel-first volume ``(C, X, Y, Z)`` -> a list of 2D slice dicts ``(C, H, W)``, each
   with ``position = (i + 1) / S`` (float32), ``slice_index = i`` and ``num_slices = S``.
3. ``slice_transform``: random per-slice augmentation, applied at every ``__getitem__``. For pretraining, wrap the
   view augmentation (:func:`volssl.data.augment.pretrain_view_transform`) in :class:`TwoViewsd` to get two
   independently augmented views ``image`` and ``image_2`` of each slice.

:class:`SliceDataset` ties the three together and exposes every slice of every volume as one item, so that a shuffled
``DataLoader`` mixes slices of several volumes in each batch (the batch composition of CORAL/PCL).

Arrays follow nibabel's and MONAI's (x, y, z) voxel order; the default slice axis is z (the last).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import Dataset, MetaTensor, get_track_meta, set_track_meta
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Randomizable,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    apply_transform,
)
from monai.transforms.traits import MultiSampleTrait
from monai.utils import TransformBackends, ensure_tuple

from ..io import VolsslInputError
from .datalist import IMAGE_KEY, LABEL_KEY, case_id

__all__ = [
    "POSITION_KEY",
    "SLICE_INDEX_KEY",
    "NUM_SLICES_KEY",
    "VOLUME_INDEX_KEY",
    "CASE_KEY",
    "ExtractSlicesd",
    "TwoViewsd",
    "SliceDataset",
    "volume_transform",
    "slice_position",
]

POSITION_KEY = "position"
SLICE_INDEX_KEY = "slice_index"
NUM_SLICES_KEY = "num_slices"
VOLUME_INDEX_KEY = "volume_index"
CASE_KEY = "case"


def slice_position(index: int, num_slices: int) -> np.float32:
    """The normalised position ``(index + 1) / num_slices`` of slice ``index`` (0-based), in ``(0, 1]``, float32."""
    return np.float32((index + 1) / num_slices)


def _spatial_axis(slice_axis: int) -> int:
    """Map a spatial slice axis (0, 1, 2 or -3..-1) to 0..2."""
    axis = int(slice_axis)
    if not -3 <= axis <= 2:
        raise ValueError(f"slice_axis must be a spatial axis 0, 1, 2 (or -1 for the last), got {slice_axis}")
    return axis % 3


def _source_name(value: Any, fallback: str) -> str:
    """The file an array came from (MetaTensor's ``filename_or_obj``), else ``fallback``."""
    if isinstance(value, MetaTensor):
        name = value.meta.get("filename_or_obj")
        if name:
            return str(name)
    return fallback


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _slice_meta_tensor(vol: MetaTensor, axis: int, index: int, data: torch.Tensor) -> MetaTensor:
    """Wrap a 2D slice of ``vol`` as a MetaTensor with a 3x3 in-plane affine (the slice's origin and spacing).

    The in-plane affine keeps the rows/columns of the two in-plane axes and moves the origin to the slice; it is exact
    for volumes whose affine is axis-aligned (the usual case) and a projection otherwise. The volume's other metadata
    (file name, original affine, ...) is kept; the volume-level applied operations are not (they cannot be inverted
    on one slice).
    """
    affine = torch.as_tensor(vol.affine, dtype=torch.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine for a 3D volume, got shape {tuple(affine.shape)}")
    inplane = [a for a in range(3) if a != axis]
    aff2 = torch.eye(3, dtype=torch.float64)
    aff2[:2, :2] = affine[inplane][:, inplane]
    aff2[:2, 2] = affine[inplane, 3] + affine[inplane, axis] * float(index)
    meta = {k: v for k, v in vol.meta.items() if k != "affine"}
    return MetaTensor(data, affine=aff2, meta=meta)


class ExtractSlicesd(MapTransform, MultiSampleTrait):
    """Split channel-first 3D volumes into 2D slices along one spatial axis.

    Input: a dict whose ``keys`` hold channel-first 3D arrays ``(C, X, Y, Z)`` (numpy arrays, tensors or MetaTensors)
    of the same spatial shape, with ``S`` slices along ``slice_axis``. Output: a list of ``S`` dicts, one per slice
    ``i`` (0-based), each holding

    - for every key, the 2D slice ``(C, H, W)`` (the two remaining spatial axes in their original order; same type as
      the input, contiguous; a MetaTensor gets a 3x3 in-plane affine and keeps the volume's other metadata such as
      ``filename_or_obj``),
    - ``position_key``: ``(i + 1) / S`` as ``np.float32`` (default collation gives a float32 tensor of shape (B,)),
    - ``index_key``: ``i`` (int), ``count_key``: ``S`` (int),
    - every other item of the input copied by reference (the case name, paths, metadata dicts, ...); a 4D array
      left out of ``keys`` is an error (it would be copied whole into every slice).

    The transform is deterministic (not ``Randomizable``), so MONAI's ``CacheDataset`` caches its output; MONAI's
    ``Compose`` maps the transforms that follow it over the list of slices.

    Args:
        keys: keys of the volumes to slice.
        slice_axis: the spatial axis to slice along: 0, 1, 2 (x, y, z of the NIfTI grid) or negative (-1: the last).
        position_key: where to store the normalised position ``(i + 1) / S``.
        index_key: where to store the 0-based slice index ``i``.
        count_key: where to store the number of slices ``S``.
        allow_missing_keys: do not raise when a key is absent from the input (e.g. no label on an unlabelled case).

    Raises:
        VolsslInputError: (naming the file where the array carries it) a key that holds no array or an array that is
            not channel-first 3D, keys with different spatial shapes, or a 4D array left out of ``keys``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection,
        slice_axis: int = -1,
        position_key: str = POSITION_KEY,
        index_key: str = SLICE_INDEX_KEY,
        count_key: str = NUM_SLICES_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_axis = _spatial_axis(slice_axis)
        self.position_key = position_key
        self.index_key = index_key
        self.count_key = count_key

    def num_slices(self, data: Mapping[Hashable, Any]) -> int:
        """The slice count ``S`` shared by the volumes under ``keys`` (checked: same spatial shape for every key)."""
        count: int | None = None
        first, shape = None, ()
        for key in self.key_iterator(dict(data)):
            vol = data[key]
            where = _source_name(vol, f"item '{key}'")
            if not _is_array(vol):
                raise VolsslInputError(
                    where, f"'{key}' holds {type(vol).__name__}, not an array: load it in the volume transform first"
                )
            if vol.ndim != 4:
                raise VolsslInputError(
                    where, f"'{key}' must be a channel-first 3D volume (C, X, Y, Z), got shape {tuple(vol.shape)}"
                )
            s = int(vol.shape[1 + self.slice_axis])
            if s < 1:
                raise VolsslInputError(where, f"'{key}' has no slices along axis {self.slice_axis}")
            if count is None:
                count, first, shape = s, key, tuple(vol.shape[1:])
            elif s != count:
                raise VolsslInputError(
                    where, f"'{key}' has {s} slices along axis {self.slice_axis} but '{first}' has {count}"
                )
            elif tuple(vol.shape[1:]) != shape:
                raise VolsslInputError(
                    where, f"'{key}' spatial shape {tuple(vol.shape[1:])} differs from '{first}' shape {shape}"
                )
        if count is None:
            raise VolsslInputError("data", f"none of the keys {list(self.keys)} is present to slice")
        return count

    def _slice(self, vol, index: int):
        axis = 1 + self.slice_axis
        if isinstance(vol, np.ndarray):
            return np.ascontiguousarray(np.take(vol, index, axis=axis))
        plain = vol.as_tensor() if isinstance(vol, MetaTensor) else vol
        data = plain.select(axis, index).clone(memory_format=torch.contiguous_format)
        if isinstance(vol, MetaTensor):
            return _slice_meta_tensor(vol, self.slice_axis, index, data)
        return data

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        """
        Args:
            data: dict with channel-first 3D arrays ``(C, X, Y, Z)`` under ``keys``.

        Returns:
            a list of ``S`` dicts, slice ``i`` holding ``(C, H, W)`` arrays, its position, index and ``S``.
        """
        d = dict(data)
        count = self.num_slices(d)
        keys = list(self.key_iterator(d))
        others = {k: v for k, v in d.items() if k not in keys}
        for k, v in others.items():
            if _is_array(v) and v.ndim == 4:
                raise VolsslInputError(
                    _source_name(v, f"item '{k}'"),
                    f"'{k}' is a volume but not one of the keys {keys} to slice: add it to the keys or drop it",
                )
        out = []
        for i in range(count):
            item = dict(others)
            for key in keys:
                item[key] = self._slice(d[key], i)
            item[self.position_key] = slice_position(i, count)
            item[self.index_key] = i
            item[self.count_key] = count
            out.append(item)
        return out


def _copy_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


class TwoViewsd(Randomizable, MapTransform):
    """Two independently augmented views of the same slice, for contrastive pretraining.

    For every key ``k`` the transform copies ``data[k]`` and runs ``view_transform`` twice, once on each copy: the
    first result replaces ``k``, the second is stored under ``k + suffix`` (``image`` -> ``image``, ``image_2``).
    ``view_transform`` (a random ``Compose`` working on the original key names) sees only ``keys``; the other items
    (``position``, ...) pass through unchanged. The two calls consume successive draws of ``view_transform``'s
    random state, so the views are independent draws, and :meth:`set_random_state` seeds ``view_transform`` (and
    through it every random transform it holds), so seeding the pipeline (``set_random_state``, or MONAI's
    ``DataLoader`` after ``monai.utils.set_determinism``) makes the views reproducible.

    Args:
        keys: keys of the arrays to augment twice (usually ``"image"``).
        view_transform: the random augmentation of one view, e.g.
            :func:`volssl.data.augment.pretrain_view_transform`.
        suffix: appended to each key for the second view.
        allow_missing_keys: do not raise when a key is absent.

    Returns (of ``__call__``):
        the dict with ``k`` (view 1) and ``k + suffix`` (view 2) for every key, e.g. ``image`` and ``image_2`` of
        shape ``(1, h, w)``.
    """

    def __init__(
        self, keys: KeysCollection, view_transform: Callable, suffix: str = "_2", allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not callable(view_transform):
            raise TypeError(f"view_transform must be callable, got {type(view_transform).__name__}")
        if not suffix:
            raise ValueError("suffix must be a non-empty string (the second view would overwrite the first)")
        self.view_transform = view_transform
        self.suffix = suffix

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViewsd:
        super().set_random_state(seed, state)
        if isinstance(self.view_transform, Randomizable) or hasattr(self.view_transform, "set_random_state"):
            self.view_transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any | None = None) -> None:
        """Nothing to draw here: the randomness lives in ``view_transform`` (drawn when it is called)."""

    def _view(self, d: Mapping[Hashable, Any], keys: Sequence[Hashable]) -> dict:
        sub = {k: _copy_value(d[k]) for k in keys}
        out = apply_transform(self.view_transform, sub)
        if not isinstance(out, Mapping):
            raise TypeError(f"view_transform must return one dict per call, got {type(out).__name__}")
        return dict(out)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        first, second = self._view(d, keys), self._view(d, keys)
        for k in keys:
            d[k] = first[k]
            d[f"{k}{self.suffix}"] = second[k]
        return d


def volume_transform(
    keys: KeysCollection = (IMAGE_KEY,),
    image_key: str = IMAGE_KEY,
    label_key: str = LABEL_KEY,
    normalize: str | None = "zscore",
    percentiles: tuple[float, float] = (0.5, 99.5),
    in_plane_spacing: float | Sequence[float] | None = None,
    slice_axis: int = -1,
    image_dtype: torch.dtype = torch.float32,
    label_dtype: torch.dtype = torch.int64,
    reader: str | None = None,
    allow_missing_keys: bool = False,
) -> Compose:
    """The deterministic per-volume preprocessing of NIfTI inputs, for :class:`SliceDataset` ``volume_transform``.

    ``LoadImaged`` (image only, (x, y, z) order) -> ``EnsureChannelFirstd`` -> optional ``Spacingd`` (in-plane only)
    -> image cast to ``image_dtype`` -> label rounded and cast to ``label_dtype`` -> intensity normalisation of the
    image over the whole volume. Output: channel-first MetaTensors ``(1, X, Y, Z)``.

    Args:
        keys: the keys to load (``("image",)`` for pretraining, ``("image", "label")`` for fine-tuning).
        image_key: the key normalised and cast to ``image_dtype`` (when in ``keys``).
        label_key: the key treated as a label (nearest resampling, integer cast) when in ``keys``.
        normalize: ``"zscore"``: per-volume ``(x - mean) / std`` over all voxels (``NormalizeIntensityd``,
            ``nonzero=False``; what PCL/CORAL's preprocessing does); ``"percentile"``: ``percentiles`` mapped to
            [0, 1] and clipped (``ScaleIntensityRangePercentilesd``; robust to bright outliers); ``None``: none.
        percentiles: lower and upper percentiles for ``normalize="percentile"``.
        in_plane_spacing: target in-plane spacing in mm (one number or two, in the order of the in-plane axes);
            the spacing along ``slice_axis`` and so the slice count is kept (PCL resamples ACDC to 1.25 mm in-plane
            and keeps z). ``None``: no resampling.
        slice_axis: the spatial slice axis (0, 1, 2, -1 = last); used by ``in_plane_spacing`` only.
        image_dtype: dtype of the image.
        label_dtype: dtype of the label (integer; ``torch.int64`` suits the losses directly).
        reader: MONAI image reader name (``None``: MONAI picks one from the file suffix, nibabel for NIfTI).
        allow_missing_keys: do not raise when a key is absent (e.g. a label on unlabelled cases).

    Returns:
        a ``Compose`` of deterministic MONAI transforms.
    """
    keys = ensure_tuple(keys)
    if normalize not in (None, "none", "zscore", "percentile"):
        raise ValueError(f"normalize must be 'zscore', 'percentile' or None, got {normalize!r}")
    image_keys = [k for k in keys if k == image_key]
    label_keys = [k for k in keys if k == label_key]
    amk = allow_missing_keys
    xforms: list = [
        LoadImaged(keys, reader=reader, image_only=True, allow_missing_keys=amk),
        EnsureChannelFirstd(keys, allow_missing_keys=amk),
    ]
    if in_plane_spacing is not None:
        axis = _spatial_axis(slice_axis)
        inplane = list(ensure_tuple(in_plane_spacing))
        if len(inplane) == 1:
            inplane = inplane * 2
        if len(inplane) != 2 or any(float(s) <= 0 for s in inplane):
            raise ValueError(f"in_plane_spacing must be one or two positive numbers (mm), got {in_plane_spacing}")
        pixdim = [float(s) for s in inplane]
        pixdim.insert(axis, -1.0)  # non-positive: keep the original spacing along the slice axis
        modes = ["nearest" if k == label_key else "bilinear" for k in keys]
        xforms.append(Spacingd(keys, pixdim=pixdim, mode=modes, allow_missing_keys=amk))
    if image_keys:
        xforms.append(EnsureTyped(image_keys, dtype=image_dtype, allow_missing_keys=amk))
    if label_keys:
        xforms.append(AsDiscreted(label_keys, rounding="torchrounding", allow_missing_keys=amk))
        xforms.append(EnsureTyped(label_keys, dtype=label_dtype, allow_missing_keys=amk))
    if image_keys and normalize == "zscore":
        xforms.append(NormalizeIntensityd(image_keys, nonzero=False, channel_wise=True, allow_missing_keys=amk))
    elif image_keys and normalize == "percentile":
        lo, hi = (float(p) for p in percentiles)
        xforms.append(
            ScaleIntensityRangePercentilesd(
                image_keys,
                lower=lo,
                upper=hi,
                b_min=0.0,
                b_max=1.0,
                clip=True,
                channel_wise=True,
                allow_missing_keys=amk,
            )
        )
    return Compose(xforms)


def _root_message(err: BaseException) -> str:
    """The innermost cause of an exception chain (MONAI wraps transform errors in ``RuntimeError``)."""
    seen = set()
    while err.__cause__ is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__
    return f"{type(err).__name__}: {err}"


class SliceDataset(Dataset):
    """Every slice of every volume, one item each, with the volumes loaded and preprocessed once.

    ``data`` is a list of dicts (e.g. :func:`volssl.data.datalist.resolve_role`'s output, paths under ``keys``). Each
    volume goes through ``volume_transform`` (deterministic: loading, channel-first, intensity normalisation, e.g.
    :func:`volume_transform`) and :class:`ExtractSlicesd`; with ``cache=True`` this happens once, at construction, and
    the slices stay in memory. Item ``n`` is one slice dict (``(C, H, W)`` arrays under ``keys``, ``position``,
    ``slice_index``, ``num_slices``, plus ``volume_index``, ``case`` and the entry's other items), deep-copied from
    the cache and passed through ``slice_transform`` (random augmentation, drawn anew at every access). Shuffling
    the items in a ``DataLoader`` therefore mixes slices of several volumes in each batch.

    Determinism: :meth:`set_random_state` seeds ``slice_transform``; MONAI's ``DataLoader`` calls it (via
    ``monai.data.utils.set_rnd``) in the main process and in each worker, from torch's seed, so
    ``monai.utils.set_determinism`` + ``monai.data.DataLoader`` reproduce the same augmentations.

    Args:
        data: the volume entries: dicts with a path (or an array) under each key of ``keys``.
        volume_transform: deterministic per-volume transform (``None``: the entries already hold channel-first 3D
            arrays ``(C, X, Y, Z)``).
        slice_transform: per-slice transform applied at ``__getitem__`` (usually random), or ``None``.
        slice_axis: the spatial axis to slice along: 0, 1, 2 or -1 (the last, z of a NIfTI file).
        cache: keep the preprocessed slices in memory (loaded at construction, ``num_workers`` threads). With
            ``False`` the volumes are read once at construction to count the slices, and each ``__getitem__``
            reloads its whole volume (slow; for data that does not fit in memory).
        keys: the keys holding volumes to slice. Every other volume-shaped item is an error, so pretraining on
            labelled cases passes ``keys=("image",)`` with a ``volume_transform`` that loads the image only.
        num_workers: threads loading the volumes at construction (``None``: one per CPU, at most 8).
        skip_empty_label: drop the slices whose ``label_key`` is all background (0), e.g. to fine-tune on the
            foreground slices only. The kept slices keep their position, index and ``num_slices`` within the full
            volume. Needs ``label_key`` in ``keys``.
        label_key: the label key, for ``skip_empty_label``.
        allow_missing_keys: do not raise when an entry lacks one of ``keys``.
        copy_cache: deep-copy the cached slice before ``slice_transform`` (keep ``True`` unless the transform never
            modifies its input in place: MONAI records applied operations on MetaTensors).
        case_key: where to store the case name (``volssl.data.datalist.case_id`` of the entry's image path) when
            the entry does not already hold that key; ``None``: do not add it.
        progress: show a progress bar while caching.
        track_meta: keep MONAI metadata on the slices (MetaTensors with an in-plane affine, and ``slice_transform``
            recording its operations). ``False``: the slices are cached as plain tensors and ``slice_transform``
            runs with MONAI's metadata tracking off (``monai.data.set_track_meta(False)`` for the duration of the
            call, restored after), so its outputs are plain tensors too. About twice as fast for the training
            augmentation, which needs no metadata (nothing inverts it); keep ``True`` where a transform reads the
            affine or is inverted later. The switch is process-wide while it lasts: do not run metadata-tracking
            transforms in other threads of the same process at the same time.

    Raises:
        VolsslInputError: a file under ``keys`` that does not exist, or a volume that fails to load or to
            preprocess: the message names the file (or the entry) and the underlying error.
    """

    def __init__(
        self,
        data: Sequence[Mapping],
        volume_transform: Callable | None = None,
        slice_transform: Callable | None = None,
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
        track_meta: bool = True,
    ) -> None:
        super().__init__(data=list(data), transform=slice_transform)
        self.track_meta = bool(track_meta)
        self.volume_transform = volume_transform
        self.slice_transform = slice_transform
        self.keys = ensure_tuple(keys)
        self.slice_axis = _spatial_axis(slice_axis)
        self.cache = bool(cache)
        self.skip_empty_label = bool(skip_empty_label)
        self.label_key = label_key
        self.allow_missing_keys = bool(allow_missing_keys)
        self.copy_cache = bool(copy_cache)
        self.case_key = case_key
        if self.skip_empty_label and label_key not in self.keys:
            raise ValueError(f"skip_empty_label needs the label key '{label_key}' in keys {list(self.keys)}")
        self.extract = ExtractSlicesd(self.keys, slice_axis=self.slice_axis, allow_missing_keys=self.allow_missing_keys)
        for v, entry in enumerate(self.data):
            self._check_entry(v, entry)

        workers = min(8, os.cpu_count() or 1) if num_workers is None else max(1, int(num_workers))
        volumes = range(len(self.data))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(self._load_volume, volumes)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(self.data), desc="loading volumes")
            loaded = list(results)

        self._cache: list[list[dict]] | None = loaded if self.cache else None
        #: number of slices of each volume
        self.num_slices: list[int] = [len(slices) for slices in loaded]
        #: ``(volume_index, slice_index)`` of every item
        self.index: list[tuple[int, int]] = []
        for v, slices in enumerate(loaded):
            for s, item in enumerate(slices):
                if self.skip_empty_label and not self._has_foreground(item):
                    continue
                self.index.append((v, s))
        del loaded

    def _check_entry(self, v: int, entry: Any) -> None:
        if not isinstance(entry, Mapping):
            raise VolsslInputError(f"data[{v}]", f"each entry must be a dict, got {type(entry).__name__}")
        for key in self.keys:
            if key not in entry:
                if self.allow_missing_keys:
                    continue
                raise VolsslInputError(f"data[{v}]", f"entry has no '{key}' (keys: {list(entry)})")
            value = entry[key]
            if isinstance(value, (str, os.PathLike)) and not os.path.isfile(value):
                raise VolsslInputError(value, f"file not found (data[{v}]['{key}'])")

    def _describe(self, v: int) -> str:
        entry = self.data[v]
        for key in self.keys:
            value = entry.get(key) if isinstance(entry, Mapping) else None
            if isinstance(value, (str, os.PathLike)):
                return str(value)
        return f"data[{v}]"

    def _load_volume(self, v: int) -> list[dict]:
        """Load, preprocess and slice volume ``v`` (no ``slice_transform``)."""
        entry = dict(self.data[v])
        try:
            vol = apply_transform(self.volume_transform, entry) if self.volume_transform is not None else entry
            if not isinstance(vol, Mapping):
                raise TypeError(f"volume_transform must return one dict, got {type(vol).__name__}")
            slices = self.extract(vol)
        except VolsslInputError:
            raise
        except Exception as err:
            problem = f"cannot load or preprocess the volume: {_root_message(err)}"
            raise VolsslInputError(self._describe(v), problem) from err
        case = None
        if self.case_key is not None and self.case_key not in entry:
            path = entry.get(IMAGE_KEY)
            if not isinstance(path, (str, os.PathLike)):
                path = next((entry[k] for k in self.keys if isinstance(entry.get(k), (str, os.PathLike))), None)
            case = case_id(path) if path is not None else f"volume_{v}"
        for item in slices:
            item[VOLUME_INDEX_KEY] = v
            if case is not None:
                item[self.case_key] = case
            if not self.track_meta:
                for key in self.keys:
                    if isinstance(item.get(key), MetaTensor):
                        item[key] = item[key].as_tensor()
        return slices

    def _has_foreground(self, item: Mapping) -> bool:
        label = item.get(self.label_key)
        if label is None:
            return False
        return bool((label != 0).any())

    def __len__(self) -> int:
        return len(self.index)

    def get_slice(self, volume_index: int, slice_index: int) -> dict:
        """Slice ``slice_index`` of volume ``volume_index``, preprocessed but without ``slice_transform`` (a copy)."""
        if self._cache is not None:
            item = self._cache[volume_index][slice_index]
            return copy.deepcopy(item) if self.copy_cache else dict(item)
        return self._load_volume(volume_index)[slice_index]

    def _transform(self, index: int):
        v, s = self.index[index]
        item = self.get_slice(v, s)
        if self.slice_transform is None:
            return item
        if self.track_meta:
            return apply_transform(self.slice_transform, item)
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return apply_transform(self.slice_transform, item)
        finally:
            set_track_meta(tracking)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> SliceDataset:
        """Seed ``slice_transform`` (called by MONAI's ``DataLoader`` through ``set_rnd``)."""
        if self.slice_transform is not None and hasattr(self.slice_transform, "set_random_state"):
            self.slice_transform.set_random_state(seed=seed, state=state)
        return self
