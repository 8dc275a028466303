"""Data handling: the datalist format, splits, converters and synthetic phantoms."""

from .datalist import (
    IMAGE_KEY,
    LABEL_KEY,
    ROLES,
    check_case_files,
    inference_inputs,
    load_datalist,
    load_images,
    load_role,
    resolve_role,
    save_datalist,
    validate_datalist,
)
from .split import make_split

__all__ = [
    "IMAGE_KEY",
    "LABEL_KEY",
    "ROLES",
    "check_case_files",
    "inference_inputs",
    "load_images",
    "load_role",
    "load_datalist",
    "make_split",
    "resolve_role",
    "save_datalist",
    "validate_datalist",
]

from .pairs import SlicePairDataset  # noqa: E402

__all__ += ["SlicePairDataset"]

from .strong_aug import StrongView3d  # noqa: E402

__all__ += ["StrongView3d"]

from .batch_augment import BatchPatchSampler3d, BatchSliceAugmentation  # noqa: E402
from .batch_loaders import PatchBatchLoader, SliceBatchLoader  # noqa: E402
from .tensor_cache import SliceTensorCache, VolumeTensorCache  # noqa: E402

__all__ += [
    "BatchPatchSampler3d",
    "BatchSliceAugmentation",
    "PatchBatchLoader",
    "SliceBatchLoader",
    "SliceTensorCache",
    "VolumeTensorCache",
]
