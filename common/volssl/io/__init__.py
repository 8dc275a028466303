"""Reading and writing images with errors that name the file and the problem: NIfTI, h5, DICOM series (read with
ITK, checked first) and DICOM SEG (written with highdicom)."""

from .atomic import atomic_path
from .dicom import DicomSeriesReader, SeriesGeometry, dicom_case_folders, read_series, select_series
from .errors import VolsslInputError
from .h5 import read_h5
from .nifti import check_same_grid, load_nifti, save_nifti, spacing_from_affine

__all__ = [
    "DicomSeriesReader",
    "SeriesGeometry",
    "VolsslInputError",
    "atomic_path",
    "check_same_grid",
    "dicom_case_folders",
    "load_nifti",
    "read_h5",
    "read_series",
    "save_nifti",
    "select_series",
    "spacing_from_affine",
]
