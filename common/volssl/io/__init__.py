"""Reading and writing images with errors that name the file and the problem."""

from .atomic import atomic_path
from .errors import VolsslInputError
from .h5 import read_h5
from .nifti import check_same_grid, load_nifti, save_nifti, spacing_from_affine

__all__ = ["VolsslInputError", "atomic_path", "check_same_grid", "load_nifti", "read_h5", "save_nifti", "spacing_from_affine"]
