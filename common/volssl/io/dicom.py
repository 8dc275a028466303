"""DICOM series: find them in folders, check them, read them with ITK.

A *case* is one image series, identified by its SeriesInstanceUID. Headers are read with pydicom (no pixel data);
the voxels with ITK, through MONAI's ``ITKReader`` (:class:`DicomSeriesReader` gives it exactly the checked series'
files in slice order), so the array and its affine are what MONAI reads everywhere else: (x, y, z) voxel order
(x along the columns of a slice, y along its rows, z across the slices) and an affine to RAS millimetres.

Before the voxels are read, :func:`check_series` checks what would otherwise be read silently wrong: one orientation,
one slice size and pixel spacing, no two slices at one position (duplicate slices), no gap larger than the others
(missing slices), evenly spaced slices, and slices stacked along their normal. Objects that are not images (SEG,
SR, RT structure sets, presentation states, ...) are recognised by their SOP class or modality and never read as
images.

Only files in the DICOM Part 10 format (the ``DICM`` marker after a 128-byte preamble) are considered; classic
single-frame series are read (enhanced multi-frame images are refused with a message saying so).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import VolsslInputError

__all__ = [
    "LPS_TO_RAS",
    "DicomInstance",
    "DicomSeries",
    "DicomSeriesReader",
    "SeriesGeometry",
    "check_series",
    "dicom_case_folders",
    "dicom_files",
    "group_series",
    "is_dicom_file",
    "read_series",
    "scan_instances",
    "select_series",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# SOP classes that hold no image to segment (PS3.4 annex B), by prefix; the value names them in messages
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG (segmentation)",
    "1.2.840.10008.5.1.4.1.1.66": "raw data / registration / fiducials",
    "1.2.840.10008.5.1.4.1.1.88.": "SR (structured report)",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT (RT structure set)",
    "1.2.840.10008.5.1.4.1.1.481.": "RT object (plan, dose, record)",
    "1.2.840.10008.5.1.4.1.1.11.": "PR (presentation state)",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document (PDF, CDA)",
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory)",
}
NON_IMAGE_MODALITIES = {
    "SEG",
    "SR",
    "RTSTRUCT",
    "RTPLAN",
    "RTDOSE",
    "RTRECORD",
    "PR",
    "KO",
    "REG",
    "DOC",
    "FID",
    "PLAN",
}
POSITION_TOL_MM = 0.01  # two slices closer than this along the normal are one position (a duplicate slice)
SPACING_TOL = 0.05  # slice gaps may differ from their median by this fraction (rounding in the headers)
MISSING_FACTOR = 1.5  # a gap this many times the median is a missing slice
ORIENTATION_TOL = 1e-4
# header fields read from every file (pydicom keywords); pixel data is never read here
_FIELDS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
)


def is_dicom_file(path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file: the ``DICM`` marker after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


MEDIA_DIRECTORY = "DICOMDIR"  # the index file of a DICOM export (PS3.10): it lists the others, it is no case


def dicom_files(folder) -> list[Path]:
    """The DICOM files directly in ``folder`` (not in its subfolders), sorted by name; hidden files and the media
    directory (``DICOMDIR``) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != MEDIA_DIRECTORY and is_dicom_file(p)
    )


def dicom_case_folders(root) -> list[Path]:
    """Every folder under ``root`` (``root`` included) that directly holds DICOM files, sorted: the case folders of
    a folder of series folders (``STUDIES/patient/study/series/`` layouts work the same)."""
    root = Path(root)
    found = []
    for current, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if dicom_files(current):
            found.append(Path(current))
    return sorted(found)


@dataclass
class DicomInstance:
    """The header fields of one DICOM file that the checks need."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    modality: str
    series_description: str
    series_number: int | None
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int | None
    columns: int | None
    frames: int
    referenced_series: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str | None:
        """What the object is when it is not an image (``"SEG (segmentation)"``, ...); ``None`` for an image."""
        for prefix, name in NON_IMAGE_SOP_CLASSES.items():
            if self.sop_class_uid == prefix or (prefix.endswith(".") and self.sop_class_uid.startswith(prefix)):
                return name
        if self.modality in NON_IMAGE_MODALITIES:
            return self.modality
        if not self.rows or not self.columns:
            return "an object without pixel data"
        return None


def _number(value):
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _floats(value, n):
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def read_instance(path) -> DicomInstance:
    """The header of one DICOM file (pixel data is not read).

    Raises:
        VolsslInputError: an unreadable file or one without SOP Instance / Series Instance UID.
    """
    import pydicom  # the bundles declare pydicom; imported here so that NIfTI-only code never needs it

    path = Path(path)
    try:
        ds = pydicom.dcmread(
            str(path), stop_before_pixels=True, specific_tags=list(_FIELDS) + ["ReferencedSeriesSequence"]
        )
    except Exception as err:  # pydicom raises several types for damaged files
        raise VolsslInputError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err

    def get(key):
        return getattr(ds, key, None)

    if not get("SOPInstanceUID") or not get("SeriesInstanceUID"):
        raise VolsslInputError(path, "DICOM file without SOPInstanceUID or SeriesInstanceUID")
    referenced = [
        str(item.SeriesInstanceUID)
        for item in (get("ReferencedSeriesSequence") or [])
        if getattr(item, "SeriesInstanceUID", None)
    ]
    return DicomInstance(
        path=path,
        sop_instance_uid=str(get("SOPInstanceUID")),
        sop_class_uid=str(get("SOPClassUID") or ""),
        series_uid=str(get("SeriesInstanceUID")),
        study_uid=str(get("StudyInstanceUID") or ""),
        modality=str(get("Modality") or "").upper(),
        series_description=str(get("SeriesDescription") or ""),
        series_number=_number(get("SeriesNumber")),
        instance_number=_number(get("InstanceNumber")),
        position=_floats(get("ImagePositionPatient"), 3),
        orientation=_floats(get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(get("PixelSpacing"), 2),
        rows=_number(get("Rows")),
        columns=_number(get("Columns")),
        frames=_number(get("NumberOfFrames")) or 1,
        referenced_series=referenced,
    )


def scan_instances(files: Iterable) -> tuple[list[DicomInstance], list[tuple[str, str]]]:
    """Read the headers of ``files``; returns the instances and ``(file, problem)`` for each unreadable one."""
    instances, bad = [], []
    for path in files:
        try:
            instances.append(read_instance(path))
        except VolsslInputError as err:
            bad.append((err.path, err.problem))
    return instances, bad


@dataclass
class DicomSeries:
    """The instances of one SeriesInstanceUID found in one folder (or one scan)."""

    uid: str
    instances: list[DicomInstance]

    @property
    def first(self) -> DicomInstance:
        return self.instances[0]

    @property
    def kind(self) -> str | None:
        """``None`` for an image series, else what it is (see :attr:`DicomInstance.kind`)."""
        return self.first.kind

    @property
    def is_image(self) -> bool:
        return self.kind is None

    def describe(self) -> str:
        """``1.2.3 (MR, series 4 'T1 axial', 35 files)``: how messages name a series."""
        first = self.first
        details = [first.modality or "no modality"]
        if first.series_number is not None or first.series_description:
            number = f"series {first.series_number}" if first.series_number is not None else "series"
            details.append(f"{number} '{first.series_description}'" if first.series_description else number)
        details.append(f"{len(self.instances)} file{'s' if len(self.instances) != 1 else ''}")
        what = f"{self.kind} " if self.kind else ""
        return f"{what}{self.uid} ({', '.join(details)})"


def group_series(instances: Iterable[DicomInstance]) -> list[DicomSeries]:
    """Group instances by SeriesInstanceUID (in order of first appearance)."""
    groups: dict[str, list[DicomInstance]] = {}
    for instance in instances:
        groups.setdefault(instance.series_uid, []).append(instance)
    return [DicomSeries(uid, members) for uid, members in groups.items()]


def select_series(folder, series_uid=None) -> tuple[DicomSeries, list[str]]:
    """The one image series of a case folder, and one line for each object there that is not an image.

    Args:
        folder: a folder holding the DICOM files of one case (directly, not in subfolders).
        series_uid: a SeriesInstanceUID, or a list of them, that picks the series when the folder holds several.

    Raises:
        VolsslInputError: naming the folder: no DICOM file, unreadable files, no image series (only SEG, SR, ...),
            or several image series and no ``series_uid`` that picks one of them.
    """
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise VolsslInputError(folder, "no DICOM file in this folder (DICOM Part 10 files, with the 'DICM' marker)")
    instances, bad = scan_instances(files)
    if bad:
        shown = "; ".join(f"{Path(p).name}: {why}" for p, why in bad[:3])
        raise VolsslInputError(folder, f"{len(bad)} unreadable DICOM file(s): {shown}")
    series = group_series(instances)
    images = [s for s in series if s.is_image]
    notes = [f"not an image, ignored: {s.describe()}" for s in series if not s.is_image]
    wanted = {series_uid} if isinstance(series_uid, str) else set(series_uid or ())
    picked = [s for s in images if s.uid in wanted]
    if len(picked) == 1:
        if len(images) > 1:
            notes.append(f"picked {picked[0].uid} (series_uid) of {len(images)} image series")
        return picked[0], notes
    if not images:
        listing = "; ".join(s.describe() for s in series)
        raise VolsslInputError(folder, f"no image series to segment, only objects that are not images: {listing}")
    if len(images) > 1:
        listing = "; ".join(s.describe() for s in images)
        hint = (
            "none of them is the given series_uid"
            if wanted
            else "one series per case: move each series into a folder of its own, or pick one with --series_uid UID"
        )
        raise VolsslInputError(folder, f"{len(images)} image series in one folder ({listing}): {hint}")
    return images[0], notes


@dataclass
class SeriesGeometry:
    """The voxel grid of a checked series: its files in slice order and where the voxels lie.

    ``shape`` is (columns, rows, slices), the (x, y, z) order of the arrays; ``affine`` maps those voxel indices to
    RAS millimetres (as nibabel and MONAI's ITKReader give it); ``spacing`` is (column spacing, row spacing, slice
    gap) in mm.
    """

    files: list[Path]
    sop_instance_uids: list[str]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray


def _position_problems(folder, series: DicomSeries, ordered, offsets: np.ndarray) -> None:
    gaps = np.diff(offsets)
    names = [inst.path.name for inst in ordered]
    close = np.flatnonzero(gaps < POSITION_TOL_MM)
    if close.size:
        i = int(close[0])
        raise VolsslInputError(
            folder,
            f"duplicate slices: {names[i]} and {names[i + 1]} lie at the same position "
            f"({offsets[i]:.3f} mm along the slice normal) in series {series.uid}; "
            f"{close.size} such pair(s)",
        )
    median = float(np.median(gaps))
    missing = np.flatnonzero(gaps > MISSING_FACTOR * median)
    if missing.size:
        i = int(missing[0])
        count = round(float(gaps[i]) / median) - 1
        raise VolsslInputError(
            folder,
            f"missing slice(s): a gap of {gaps[i]:.3f} mm between {names[i]} and "
            f"{names[i + 1]} where the other slices are {median:.3f} mm apart (about "
            f"{count} slice(s) missing) in series {series.uid}; "
            f"{missing.size} such gap(s)",
        )
    if float(gaps.max() - gaps.min()) > SPACING_TOL * median:
        raise VolsslInputError(
            folder,
            f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
            f"(median {median:.3f}) in series {series.uid}; ITK would place the slices on "
            "a regular grid, misplacing some: resample the series first",
        )


def check_series(series: DicomSeries, folder=None) -> SeriesGeometry:
    """Check that ``series`` is one regular 3D grid and return it (files in slice order).

    Slices are ordered by their position along the slice normal (row direction x column direction), so the third
    axis of the grid points along the normal whatever the files' names or instance numbers.

    Raises:
        VolsslInputError: naming ``folder`` (default: the first file's folder): not an image, a multi-frame image,
            fewer than 2 slices, missing geometry, mixed orientations / slice sizes / pixel spacings, slices not
            stacked along their normal, duplicate or missing slices, uneven slice spacing.
    """
    instances = series.instances
    folder = Path(folder) if folder is not None else instances[0].path.parent
    if not series.is_image:
        raise VolsslInputError(folder, f"not an image: {series.describe()}")
    multi = [i for i in instances if i.frames > 1]
    if multi:
        raise VolsslInputError(
            folder,
            f"{multi[0].path.name} is a multi-frame image ({multi[0].frames} frames): only "
            "classic single-frame series are read; export the series as one file per slice",
        )
    if len(instances) < 2:
        raise VolsslInputError(folder, f"series {series.uid} has a single slice (a 2D image); expected a 3D series")
    uids = [i.sop_instance_uid for i in instances]
    if len(set(uids)) != len(uids):
        seen: dict[str, Path] = {}
        for inst in instances:
            if inst.sop_instance_uid in seen:
                raise VolsslInputError(
                    folder,
                    f"duplicate slices: {seen[inst.sop_instance_uid].name} and "
                    f"{inst.path.name} are the same instance {inst.sop_instance_uid}",
                )
            seen[inst.sop_instance_uid] = inst.path
    lacking = [i for i in instances if i.position is None or i.orientation is None or i.pixel_spacing is None]
    if lacking:
        raise VolsslInputError(
            folder,
            f"{lacking[0].path.name}: no ImagePositionPatient, ImageOrientationPatient or "
            f"PixelSpacing, so the slices cannot be placed ({len(lacking)} such file(s))",
        )
    first = instances[0]
    for inst in instances[1:]:
        if not np.allclose(inst.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise VolsslInputError(
                folder,
                f"{inst.path.name} has another orientation than {first.path.name} "
                f"({inst.orientation} vs {first.orientation}): one series, several stacks "
                "(e.g. a localizer); split it",
            )
        if (inst.rows, inst.columns) != (first.rows, first.columns):
            raise VolsslInputError(
                folder,
                f"{inst.path.name} is {inst.rows} x {inst.columns} pixels, "
                f"{first.path.name} {first.rows} x {first.columns}",
            )
        if not np.allclose(inst.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise VolsslInputError(
                folder,
                f"{inst.path.name} has pixel spacing {inst.pixel_spacing}, {first.path.name} {first.pixel_spacing}",
            )
    row_dir = np.asarray(first.orientation[:3])  # direction of increasing column index
    col_dir = np.asarray(first.orientation[3:])  # direction of increasing row index
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([inst.position for inst in instances])
    order = np.argsort(positions @ normal, kind="stable")
    ordered = [instances[i] for i in order]
    positions = positions[order]
    offsets = positions @ normal
    _position_problems(folder, series, ordered, offsets)
    gap = float(np.median(np.diff(offsets)))
    drift = positions - positions[0] - np.outer(offsets - offsets[0], normal)
    if float(np.abs(drift).max()) > max(POSITION_TOL_MM, SPACING_TOL * gap):
        raise VolsslInputError(
            folder,
            f"the slices of series {series.uid} are not stacked along their normal (shifted "
            f"in-plane by up to {np.abs(drift).max():.3f} mm: gantry tilt or a sheared "
            "stack); resample the series first",
        )
    row_spacing, col_spacing = first.pixel_spacing  # PixelSpacing: between rows, then between columns
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = normal * gap
    lps[:3, 3] = positions[0]
    return SeriesGeometry(
        files=[inst.path for inst in ordered],
        sop_instance_uids=[inst.sop_instance_uid for inst in ordered],
        shape=(int(first.columns), int(first.rows), len(ordered)),
        spacing=(float(col_spacing), float(row_spacing), gap),
        affine=LPS_TO_RAS @ lps,
    )


def _ensure_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


try:  # MONAI is there wherever the bundles run; this module's other functions do not need it
    from monai.data import ITKReader as _ITKReader
except ImportError:  # pragma: no cover - volssl always has MONAI
    _ITKReader = object  # type: ignore[assignment,misc]


class DicomSeriesReader(_ITKReader):  # type: ignore[misc,valid-type]
    """MONAI's ``ITKReader`` for a DICOM case folder: it reads the folder's image series (picked by SeriesInstanceUID,
    see :func:`select_series`), checked by :func:`check_series`, from its files in slice order.

    ``verify_suffix`` accepts folders only. A file handed to ``read`` goes where MONAI's default reader choice would
    send it (``.nii``/``.nii.gz`` to nibabel, anything else to ``ITKReader``) instead of failing: MONAI's
    ``LoadImage(reader=...)`` tries the given reader first and logs "unable to load" for every file it refuses, one
    line per NIfTI volume of an evaluation. For DICOM everything else (array order, LPS -> RAS affine, metadata) is
    ``ITKReader``'s.

    Args:
        series_uid: picks the series in a folder holding several image series (one UID or a list).
        kwargs: passed to ``ITKReader``.
    """

    def __init__(self, series_uid=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.series_uid = series_uid
        from monai.data import NibabelReader

        self._nifti = NibabelReader()

    def get_data(self, img):
        first = img[0] if isinstance(img, (list, tuple)) else img
        from nibabel.filebasedimages import FileBasedImage

        if isinstance(first, FileBasedImage):
            return self._nifti.get_data(img)
        return super().get_data(img)

    def verify_suffix(self, filename: Sequence | os.PathLike | str) -> bool:
        names = _ensure_list(filename)
        return bool(names) and all(os.path.isdir(n) for n in names)

    def read(self, data, **kwargs):
        import itk

        if not self.verify_suffix(data):
            if self._nifti.verify_suffix(data):
                return self._nifti.read(data, **kwargs)
            return super().read(data, **kwargs)
        images = []
        for folder in _ensure_list(data):
            series, _ = select_series(folder, self.series_uid)
            geometry = check_series(series, folder)
            kwargs_ = {**self.kwargs, **kwargs}
            images.append(itk.imread([str(p) for p in geometry.files], imageio=itk.GDCMImageIO.New(), **kwargs_))
        return images if len(images) > 1 else images[0]


def read_series(folder, series_uid=None) -> tuple[np.ndarray, np.ndarray, SeriesGeometry, list[str]]:
    """Select, check and read the image series of a case folder.

    Returns:
        ``(array, affine, geometry, notes)``: the (x, y, z) voxels as ITK reads them (rescale slope/intercept
        applied), the RAS affine MONAI's ``ITKReader`` gives them, the checked geometry, and one line per object of
        the folder that is not an image.

    Raises:
        VolsslInputError: see :func:`select_series` and :func:`check_series`; also when ITK cannot read the files,
            or reads them onto another grid than the slice positions say.
    """
    folder = Path(folder)
    series, notes = select_series(folder, series_uid)
    geometry = check_series(series, folder)
    reader = DicomSeriesReader(series_uid=series_uid)
    try:
        array, meta = reader.get_data(reader.read(str(folder)))
    except VolsslInputError:
        raise
    except Exception as err:  # ITK raises RuntimeError with GDCM's message
        raise VolsslInputError(folder, f"ITK cannot read series {series.uid} ({type(err).__name__}: {err})") from err
    array = np.asarray(array)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if tuple(array.shape) != geometry.shape or not np.allclose(affine, geometry.affine, atol=1e-3):
        raise VolsslInputError(
            folder,
            f"ITK read series {series.uid} as {tuple(array.shape)} voxels with affine "
            f"{np.round(affine, 3).tolist()}, but its slice headers say {geometry.shape} "
            f"and {np.round(geometry.affine, 3).tolist()}",
        )
    return array, affine, geometry, notes
