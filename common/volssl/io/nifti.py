"""NIfTI reading and writing.

Arrays are in nibabel's (x, y, z) voxel order; the affine maps voxel indices to RAS millimetres.
Writing is atomic (a temporary file in the same folder, then a rename), so an interrupted run never leaves a
truncated file where a good one was.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_path
from .errors import VolsslInputError

__all__ = ["load_nifti", "save_nifti", "spacing_from_affine", "check_same_grid"]


def spacing_from_affine(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel spacing in mm: the norms of the affine's first three columns."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def load_nifti(path, dtype=None, squeeze: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D NIfTI file and return ``(array, affine)``.

    Args:
        path: the ``.nii`` or ``.nii.gz`` file.
        dtype: cast the array to this type (``None`` keeps the stored type).
        squeeze: drop trailing singleton dimensions (a 4D file with one frame is read as 3D).

    Raises:
        VolsslInputError: missing file, unreadable or truncated file, or an array that is not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise VolsslInputError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise VolsslInputError(path, f"cannot read NIfTI (corrupt or truncated file): {err}") from err
    if squeeze:
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
    if data.ndim != 3:
        raise VolsslInputError(path, f"expected a 3D volume, got shape {tuple(data.shape)}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, np.asarray(img.affine, dtype=np.float64)


def save_nifti(array: np.ndarray, affine: np.ndarray, path, dtype=None) -> Path:
    """Write ``array`` with ``affine`` to ``path`` atomically and return the path.

    The header's zooms follow the affine, and the integer types are stored as such (labels stay integers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path


def check_same_grid(path_a, shape_a, affine_a, path_b, shape_b, affine_b, atol: float = 1e-3) -> None:
    """Raise a :class:`VolsslInputError` naming both files when two volumes are not on the same voxel grid."""
    if tuple(shape_a) != tuple(shape_b):
        raise VolsslInputError(path_b, f"shape {tuple(shape_b)} differs from {path_a} shape {tuple(shape_a)}")
    if not np.allclose(affine_a, affine_b, atol=atol):
        sa = tuple(round(s, 4) for s in spacing_from_affine(affine_a))
        sb = tuple(round(s, 4) for s in spacing_from_affine(affine_b))
        raise VolsslInputError(
            path_b, f"affine differs from {path_a} (spacing {sb} vs {sa}; origin/orientation may differ too)"
        )
