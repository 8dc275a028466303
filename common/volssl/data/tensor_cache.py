"""Volumes read, preprocessed and cached once as tensors, on the training device when they fit.

The batched data path (:mod:`volssl.data.batch_loaders`) samples slices or patches from these caches and augments
them as batches on the device, so nothing is read, normalised or copied per sample during training. What MONAI
offers is used for the caching itself: ``CacheDataset`` runs the bundle's deterministic preprocessing (loading,
channel-first, casts, intensity normalisation) once per volume, in threads; the results are moved to the device
as MONAI's ``ToDevice`` would. MONAI has no batched sampler of slices or patches from volumes of different sizes,
so the caches keep every volume in one flat buffer per key with its offset and shape: any set of crops from any
volumes is then a single gather (:func:`volssl.data.batch_augment.gather_patches`), without padding the volumes to
a common size.

Placement: on a CUDA device the buffers go to the GPU when they take at most ``max_device_fraction`` of its free
memory, otherwise they stay in pinned host memory (copied to the GPU batch by batch); on a CPU they stay where they
are.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import apply_transform

from ..io import VolsslInputError
from .datalist import IMAGE_KEY, LABEL_KEY, case_id

__all__ = ["cache_volumes", "storage_device", "SliceTensorCache", "VolumeTensorCache"]

logger = logging.getLogger("volssl.data")


class _NamedErrors:
    """Wraps a volume transform so that a failure names the file (MONAI's wrapping would hide which one)."""

    def __init__(self, transform: Callable | None, keys: Sequence[str]) -> None:
        self.transform = transform
        self.keys = tuple(keys)

    def __call__(self, entry: Mapping) -> Any:
        entry = dict(entry)
        for key in self.keys:
            value = entry.get(key)
            if isinstance(value, (str, os.PathLike)) and not os.path.isfile(value):
                raise VolsslInputError(value, f"file not found ('{key}')")
        if self.transform is None:
            return entry
        try:
            return apply_transform(self.transform, entry)
        except Exception as err:  # the innermost cause names what went wrong
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if isinstance(cause, VolsslInputError):
                raise cause from None
            where = next((str(entry[k]) for k in self.keys if isinstance(entry.get(k), (str, os.PathLike))), "entry")
            raise VolsslInputError(
                where, f"cannot load or preprocess the volume: {type(cause).__name__}: {cause}"
            ) from err


def _unwrap_input_error(err: BaseException) -> BaseException:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, VolsslInputError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return err


def cache_volumes(
    data: Sequence[Mapping],
    volume_transform: Callable | None,
    keys: Sequence[str],
    num_workers: int = 1,
    progress: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Every entry through ``volume_transform`` once (MONAI's ``CacheDataset``), as plain CPU tensors.

    Returns:
        one dict per entry with a channel-first tensor ``(C, *spatial)`` under each of ``keys`` that it has.

    Raises:
        VolsslInputError: an empty ``data``, a missing file or one that fails to load or preprocess (named).
    """
    if len(data) == 0:
        raise VolsslInputError("data", f"no volumes to cache (an empty datalist role?) for keys {list(keys)}")
    try:
        dataset = CacheDataset(
            list(data),
            transform=_NamedErrors(volume_transform, keys),
            cache_rate=1.0,
            num_workers=max(1, int(num_workers)),
            progress=progress,
            copy_cache=False,
        )
        items = [dataset[i] for i in range(len(dataset))]
    except Exception as err:
        found = _unwrap_input_error(err)
        if found is not err:
            raise found from None
        raise
    out = []
    for item in items:
        entry = {}
        for key in keys:
            if key in item:
                value = item[key]
                value = value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(np.asarray(value))
                entry[key] = value
        out.append(entry)
    return out


def storage_device(
    device: torch.device | str, nbytes: int, max_device_fraction: float = 0.5
) -> tuple[torch.device, bool]:
    """Where a cache of ``nbytes`` lives: ``(device, pin)``.

    CUDA: the GPU when ``nbytes <= max_device_fraction * free memory``, else the host with ``pin=True``; any other
    device: itself, unpinned.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return device, False
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= max_device_fraction * free:
        return device, False
    return torch.device("cpu"), True


def _place(tensor: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    tensor = tensor.to(device)
    return tensor.pin_memory() if pin else tensor


def _label_storage(label: torch.Tensor, where: str) -> torch.Tensor:
    """A label in the smallest integer type that holds it (uint8 for up to 256 classes)."""
    if label.is_floating_point():
        rounded = torch.round(label)
        if not torch.equal(rounded, label):
            raise VolsslInputError(where, "the label holds non-integer values")
        label = rounded
    lo, hi = (int(label.min()), int(label.max())) if label.numel() else (0, 0)
    if lo < 0:
        raise VolsslInputError(where, f"the label holds negative values (min {lo})")
    return label.to(torch.uint8 if hi < 256 else torch.int32)


class _FlatBuffers:
    """Tensors of different spatial shapes concatenated per key into one ``(C, total)`` buffer each."""

    def __init__(self, pieces: dict[str, list[torch.Tensor]], device: torch.device, max_device_fraction: float):
        nbytes = sum(t.numel() * t.element_size() for ts in pieces.values() for t in ts)
        self.device, self.pinned = storage_device(device, nbytes, max_device_fraction)
        self.nbytes = nbytes
        self.buffers: dict[str, torch.Tensor] = {}
        for key, tensors in pieces.items():
            flat = torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1) if tensors else torch.empty(0)
            self.buffers[key] = _place(flat, self.device, self.pinned)


def _describe(entry: Mapping, keys: Sequence[str], index: int) -> str:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, (str, os.PathLike)):
            return str(value)
    return f"data[{index}]"


def _check_volume(vol: dict[str, torch.Tensor], keys: Sequence[str], where: str, dims: int) -> tuple[int, ...]:
    shape = None
    for key in keys:
        if key not in vol:
            continue
        t = vol[key]
        if t.dim() != dims + 1:
            raise VolsslInputError(where, f"'{key}' must be channel-first {dims}D, got shape {tuple(t.shape)}")
        if shape is None:
            shape = tuple(t.shape[1:])
        elif tuple(t.shape[1:]) != shape:
            raise VolsslInputError(where, f"'{key}' spatial shape {tuple(t.shape[1:])} differs from {shape}")
    if shape is None:
        raise VolsslInputError(where, f"none of the keys {list(keys)} is present")
    if min(shape) < 1:
        raise VolsslInputError(where, f"empty volume of shape {shape}")
    return shape


class SliceTensorCache:
    """Every 2D slice of every volume, preprocessed once, as flat tensors on the device (slice methods).

    Slice ``n`` of the cache (``0 <= n < len(cache)``) has its pixels at ``buffers[key][:, offset[n] : offset[n] +
    height[n] * width[n]]`` (row-major ``(H, W)``), its normalised position ``(i + 1) / S`` (as
    :func:`volssl.data.slices.slice_position`), its volume, slice index and the slice count ``S`` of its volume, in
    tensors on the cache's device. ``items`` lists the slices that training samples (all, or those with foreground
    when ``skip_empty_label``); positions always refer to the full volume.

    Args:
        data: the volume entries (paths under ``keys``), e.g. ``volssl.data.load_role(datalist, "training")``.
        volume_transform: deterministic per-volume preprocessing (e.g. :func:`volssl.data.slices.volume_transform`).
        keys: the keys to cache (``("image",)`` for pretraining, ``("image", "label")`` for fine-tuning).
        slice_axis: the spatial axis to slice along (0, 1, 2 or -1).
        device: the training device (see the module docstring for the placement).
        skip_empty_label: sample only slices whose label has foreground.
        image_key, label_key: which keys are the image (float32) and the label (smallest integer type).
        num_workers: threads of the ``CacheDataset``.
        progress: progress bar while caching.
        max_device_fraction: the share of the GPU's free memory the cache may take.

    Raises:
        VolsslInputError: see :func:`cache_volumes`; volumes whose keys disagree in shape.
    """

    def __init__(
        self,
        data: Sequence[Mapping],
        volume_transform: Callable | None,
        keys: Sequence[str] = (IMAGE_KEY,),
        slice_axis: int = -1,
        device: torch.device | str = "cpu",
        skip_empty_label: bool = False,
        image_key: str = IMAGE_KEY,
        label_key: str = LABEL_KEY,
        num_workers: int = 1,
        progress: bool = False,
        max_device_fraction: float = 0.5,
    ) -> None:
        self.keys = tuple(keys)
        self.image_key, self.label_key = image_key, label_key
        if skip_empty_label and label_key not in self.keys:
            raise ValueError(f"skip_empty_label needs the label key '{label_key}' in keys {list(self.keys)}")
        axis = int(slice_axis)
        if not -3 <= axis <= 2:
            raise ValueError(f"slice_axis must be a spatial axis 0, 1, 2 (or -1 for the last), got {slice_axis}")
        self.slice_axis = axis % 3
        data = list(data)
        volumes = cache_volumes(data, volume_transform, self.keys, num_workers, progress)
        pieces: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}
        offset, height, width, position, volume, index, count, keep = [], [], [], [], [], [], [], []
        self.cases: list[str] = []
        total = 0
        for v, vol in enumerate(volumes):
            where = _describe(data[v], self.keys, v)
            _check_volume(vol, self.keys, where, 3)
            for key in self.keys:
                if key not in vol:
                    raise VolsslInputError(where, f"entry has no '{key}'")
                t = vol[key].movedim(1 + self.slice_axis, 1).contiguous()  # (C, S, H, W)
                if key == label_key:
                    t = _label_storage(t, where)
                elif key == image_key:
                    t = t.float()
                    if not torch.isfinite(t).all():
                        raise VolsslInputError(where, "the image holds NaN or infinite values after preprocessing")
                pieces[key].append(t)
            s, h, w = pieces[self.keys[0]][-1].shape[1:]
            for i in range(s):
                offset.append(total + i * h * w)
                height.append(h)
                width.append(w)
                position.append((i + 1) / s)
                volume.append(v)
                index.append(i)
                count.append(s)
                if skip_empty_label:
                    keep.append(bool((pieces[label_key][-1][:, i] != 0).any()))
            total += s * h * w
            image = data[v].get(image_key) if isinstance(data[v], Mapping) else None
            self.cases.append(case_id(image) if isinstance(image, (str, os.PathLike)) else f"volume_{v}")
        flat = _FlatBuffers(pieces, torch.device(device), max_device_fraction)
        self.buffers, self.device, self.pinned, self.nbytes = flat.buffers, flat.device, flat.pinned, flat.nbytes
        meta_device = flat.device  # the gather runs where the buffers are
        as_long = dict(dtype=torch.int64, device=meta_device)
        self.offset = torch.tensor(offset, **as_long)
        self.height = torch.tensor(height, **as_long)
        self.width = torch.tensor(width, **as_long)
        self.position = torch.tensor(position, dtype=torch.float32, device=meta_device)
        self.volume = torch.tensor(volume, **as_long)
        self.slice_index = torch.tensor(index, **as_long)
        self.num_slices = torch.tensor(count, **as_long)
        kept = torch.arange(len(offset), device=meta_device)
        if skip_empty_label:
            kept = kept[torch.tensor(keep, dtype=torch.bool, device=meta_device)]
        #: the cache indices of the slices training samples
        self.items = kept
        if self.items.numel() == 0:
            raise VolsslInputError("data", "no slice to train on (every label is empty?)")
        self.num_volumes = len(volumes)
        logger.info(
            f"cached {len(offset)} slices of {len(volumes)} volumes ({self.nbytes / 2**20:.1f} MiB) on "
            f"{self.device}{' (pinned)' if self.pinned else ''}"
        )

    def __len__(self) -> int:
        return int(self.offset.numel())

    @property
    def channels(self) -> int:
        return int(self.buffers[self.image_key].shape[0])


class VolumeTensorCache:
    """Whole 3D volumes, preprocessed once, as flat tensors on the device (CRLN's labelled and unlabelled pools).

    Volume ``v`` has its voxels at ``buffers[key][:, offset[v] : offset[v] + prod(shape[v])]`` (row-major
    ``(X, Y, Z)``); ``shape`` is a ``(V, 3)`` tensor. Arguments as :class:`SliceTensorCache` (no slicing).
    """

    def __init__(
        self,
        data: Sequence[Mapping],
        volume_transform: Callable | None,
        keys: Sequence[str] = (IMAGE_KEY,),
        device: torch.device | str = "cpu",
        image_key: str = IMAGE_KEY,
        label_key: str = LABEL_KEY,
        num_workers: int = 1,
        progress: bool = False,
        max_device_fraction: float = 0.5,
    ) -> None:
        self.keys = tuple(keys)
        self.image_key, self.label_key = image_key, label_key
        data = list(data)
        volumes = cache_volumes(data, volume_transform, self.keys, num_workers, progress)
        pieces: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}
        offset, shape = [], []
        self.cases: list[str] = []  # one name per cached volume, in order
        total = 0
        for v, vol in enumerate(volumes):
            where = _describe(data[v], self.keys, v)
            spatial = _check_volume(vol, self.keys, where, 3)
            for key in self.keys:
                if key not in vol:
                    raise VolsslInputError(where, f"entry has no '{key}'")
                t = vol[key]
                if key == label_key:
                    t = _label_storage(t, where)
                elif key == image_key:
                    t = t.float()
                    if not torch.isfinite(t).all():
                        raise VolsslInputError(where, "the image holds NaN or infinite values after preprocessing")
                pieces[key].append(t.contiguous())
            offset.append(total)
            shape.append(spatial)
            total += math.prod(spatial)
            image = data[v].get(image_key) if isinstance(data[v], Mapping) else None
            self.cases.append(case_id(image) if isinstance(image, (str, os.PathLike)) else f"volume_{v}")
        flat = _FlatBuffers(pieces, torch.device(device), max_device_fraction)
        self.buffers, self.device, self.pinned, self.nbytes = flat.buffers, flat.device, flat.pinned, flat.nbytes
        self.offset = torch.tensor(offset, dtype=torch.int64, device=flat.device)
        self.shape = torch.tensor(shape, dtype=torch.int64, device=flat.device)
        logger.info(
            f"cached {len(volumes)} volumes ({self.nbytes / 2**20:.1f} MiB) on "
            f"{self.device}{' (pinned)' if self.pinned else ''}"
        )

    def __len__(self) -> int:
        return int(self.offset.numel())

    @property
    def channels(self) -> int:
        return int(self.buffers[self.image_key].shape[0])
