"""Inference inputs checked before the network runs.

:class:`InferenceInputs` resolves what a user passes as ``--input`` (a NIfTI file, a DICOM series folder, a folder of
NIfTI files and/or series folders, or a datalist and a role) and checks every image first: readable, 3D with one
channel, finite values, a plausible size; for a DICOM folder also one image series per case, no missing or duplicate
slices, even slice spacing (:mod:`volssl.io.dicom`), objects that are not images (SEG, SR, ...) ignored with a line,
and a folder holding only such objects skipped. A bad image is reported (one line naming the file or folder and the
problem) and skipped; the good ones are segmented; two inputs whose outputs would have one name are too; at the end
:meth:`InferenceInputs.report` ends the run with a :class:`~volssl.io.VolsslInputError` listing the skipped files (so
the exit status is non-zero). With ``stop_on_error`` the first bad image stops the run before anything is segmented.

Images that read fine but look unlike the training data get one warning line each, naming the file and the figure:
spacing or size far from the training data's (``expected``: the ``training_data`` of the training record, which an
exported bundle keeps in ``inference.json`` as ``expected_input``), and label-like content (a handful of integer
values, e.g. a segmentation passed as the image).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from ..data.datalist import IMAGE_KEY, case_id, inference_inputs
from ..io import VolsslInputError, read_series, spacing_from_affine

__all__ = ["CASE_KEY", "OUTPUT_FORMATS", "InferenceInputs", "check_image", "check_input", "distribution_warnings"]

logger = logging.getLogger("volssl.inputs")

MAX_VOXELS = 1024**3 // 2  # 512 M voxels (2 GiB as float32): beyond this the run would exhaust a workstation
MIN_SIDE = 2
SPACING_FACTOR = 2.0  # warn when a spacing is more than 2x off the training range
SIZE_FACTOR = 4.0  # warn when a side is more than 4x off the training range
LABEL_LIKE_VALUES = 16  # an image with at most this many distinct integer values looks like a label map
OUTPUT_FORMATS = ("nifti", "dicom_seg")
CASE_KEY = "case"  # the data key naming a case's outputs (``<case>_seg.nii.gz``)


def check_image(path) -> tuple[np.ndarray, np.ndarray]:
    """Read one inference input and check it; returns ``(array, affine)`` with a trailing channel axis of size 1
    squeezed away.

    Raises:
        VolsslInputError: a missing, empty, truncated or non-NIfTI file, not 3D (2D, or 4D with several channels or
            frames), a side shorter than 2 voxels, more than :data:`MAX_VOXELS` voxels, or NaN/Inf voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise VolsslInputError(path, "file not found")
    if path.stat().st_size == 0:
        raise VolsslInputError(path, "empty file (0 bytes)")
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as err:
        raise VolsslInputError(path, f"not a readable NIfTI image ({type(err).__name__}: {err})") from err
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    _check_shape(path, shape)
    try:
        data = np.asarray(img.dataobj).reshape(shape)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise VolsslInputError(path, f"cannot read the voxels (truncated or corrupt file): {err}") from err
    _check_finite(path, data)
    return data, np.asarray(img.affine, dtype=np.float64)


def _check_shape(path, shape: tuple) -> None:
    if len(shape) != 3:
        kind = "2D" if len(shape) < 3 else f"{len(shape)}D"
        raise VolsslInputError(path, f"expected a 3D single-channel volume, got a {kind} image of shape {shape}")
    if min(shape) < MIN_SIDE:
        raise VolsslInputError(path, f"shape {shape}: every side must have at least {MIN_SIDE} voxels")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise VolsslInputError(
            path,
            f"shape {shape}: {np.prod(shape):,} voxels is more than this run accepts "
            f"({MAX_VOXELS:,}); crop or resample the image first",
        )


def _check_finite(path, data: np.ndarray) -> None:
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data))) if np.issubdtype(data.dtype, np.floating) else 0
    if bad:
        raise VolsslInputError(path, f"{bad:,} voxels are NaN or infinite ({100 * bad / data.size:.2f} % of the image)")


def check_input(path, series_uid=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check one inference input, a NIfTI file (:func:`check_image`) or a DICOM case folder
    (:func:`volssl.io.read_series`: the series' checks, then the same size and value checks); returns
    ``(array, affine, notes)``, ``notes`` one line per object of the folder that is not an image (ignored).

    Raises:
        VolsslInputError: naming the file or folder and the problem.
    """
    if Path(path).is_dir():
        data, affine, _, notes = read_series(path, series_uid)
        _check_shape(path, tuple(int(s) for s in data.shape))
        _check_finite(path, data)
        return data, affine, notes
    data, affine = check_image(path)
    return data, affine, []


def distribution_warnings(path, data: np.ndarray, affine: np.ndarray, expected: Mapping | None) -> list[str]:
    """One line per way the image looks unlike the training data (``expected``: the training record's
    ``training_data``) or like a label map; an empty list when it looks fine."""
    warnings = []
    spacing = np.asarray(spacing_from_affine(affine))
    shape = np.asarray(data.shape)
    if expected and expected.get("spacing_mm"):
        lo, hi = np.asarray(expected["spacing_mm"]["min"]), np.asarray(expected["spacing_mm"]["max"])
        if np.any(spacing < lo / SPACING_FACTOR) or np.any(spacing > hi * SPACING_FACTOR):
            warnings.append(
                f"spacing {tuple(round(float(s), 3) for s in spacing)} mm is far from the training "
                f"data's {tuple(lo.tolist())}..{tuple(hi.tolist())} mm"
            )
    if expected and expected.get("shape"):
        lo, hi = np.asarray(expected["shape"]["min"]), np.asarray(expected["shape"]["max"])
        if np.any(shape < lo / SIZE_FACTOR) or np.any(shape > hi * SIZE_FACTOR):
            warnings.append(
                f"size {tuple(int(s) for s in shape)} is far from the training data's "
                f"{tuple(lo.tolist())}..{tuple(hi.tolist())} voxels"
            )
    sample = data.reshape(-1)[:: max(1, data.size // 2_000_000)]  # a bounded sample: this runs on every input
    values = np.unique(sample)
    if values.size <= LABEL_LIKE_VALUES and np.all(values == np.round(values)):
        warnings.append(
            f"only {values.size} distinct integer values {values.astype(int).tolist()[:8]}: "
            "this looks like a label map, not an image"
        )
    return [f"{path}: {w}" for w in warnings]


class InferenceInputs:
    """The images of an inference run, checked before the network runs (see the module docstring).

    Args:
        source: a NIfTI file, a DICOM series folder, a folder of NIfTI files and/or series folders, or a datalist.
        role: the datalist role to segment (datalists only).
        expected: the training data's statistics (``training_data`` of the training record), or ``None``.
        stop_on_error: stop at the first bad input instead of skipping it.
        series_uid: a SeriesInstanceUID (or a list) that picks the series of a folder holding several image series.
        output_format: ``"nifti"`` or ``"dicom_seg"``; a DICOM SEG needs a DICOM source series, so with
            ``"dicom_seg"`` NIfTI inputs are skipped.

    Attributes:
        good: ``[{"image": path, "case": name}, ...]`` for MONAI's ``Dataset`` (``case`` names the outputs).
        skipped: ``[(path, problem), ...]``.
        warnings: the out-of-distribution lines and the objects ignored as not images.
    """

    def __init__(
        self,
        source,
        role: str = "test",
        expected: Mapping | None = None,
        stop_on_error: bool = False,
        series_uid=None,
        output_format: str = "nifti",
    ):
        self.source = str(source)
        if output_format not in OUTPUT_FORMATS:
            raise VolsslInputError("output_format", f"must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        entries = inference_inputs(source, role)
        self.good: list[dict] = []
        self.skipped: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        cases: dict[str, str] = {}
        for entry in entries:
            path = entry[IMAGE_KEY]
            case = entry.get(CASE_KEY) or case_id(path)
            try:
                if output_format == "dicom_seg" and not Path(path).is_dir():
                    raise VolsslInputError(
                        path,
                        "a DICOM SEG output is written onto a DICOM source series, and this "
                        "input is a NIfTI file (use --output_format nifti for it)",
                    )
                if case in cases:
                    raise VolsslInputError(
                        path,
                        f"its case name '{case}' is also that of {cases[case]}: its output "
                        "would overwrite the other's; rename one",
                    )
                data, affine, notes = check_input(path, series_uid)
            except VolsslInputError as err:
                if stop_on_error:
                    raise
                logger.error(f"skipped {err}")
                self.skipped.append((err.path, err.problem))
                continue
            cases[case] = path
            for line in [f"{path}: {note}" for note in notes] + distribution_warnings(path, data, affine, expected):
                logger.warning(f"WARNING {line}")
                self.warnings.append(line)
            self.good.append({IMAGE_KEY: path, CASE_KEY: case})
        if not self.good:
            listing = "; ".join(f"{Path(p).name}: {why}" for p, why in self.skipped)
            raise VolsslInputError(self.source, f"no input can be segmented ({listing})")
        logger.info(f"{len(self.good)} input(s) to segment, {len(self.skipped)} skipped")

    def report(self) -> None:
        """End the run: raise a :class:`VolsslInputError` listing the skipped inputs, if any."""
        if self.skipped:
            listing = "; ".join(f"{p}: {why}" for p, why in self.skipped)
            raise VolsslInputError(
                self.source,
                f"{len(self.skipped)} of {len(self.skipped) + len(self.good)} input(s) skipped, the "
                f"others segmented. Skipped: {listing}",
            )
