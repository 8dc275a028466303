"""DICOM Segmentation objects (SEG): label maps written onto a source series, and read back.

Written with highdicom (a maintained implementation of the DICOM SEG IOD from the Imaging Data Commons team): it
builds the object from the source series' own headers (patient, study, frame of reference, per-frame positions and
the references to each source instance), validates the segment descriptions against the standard's coded
concepts, and works with pydicom 3. pydicom-seg, the alternative, has had no release since 2023, does not import
with pydicom 3 and needs SimpleITK beside ITK.

A label map ``(x, y, z)`` on the series' grid (:class:`~volssl.io.dicom.SeriesGeometry`: z in slice order) becomes a
BINARY segmentation with one segment per foreground class (segment number = class index, segment label = the class
name), one frame per slice and segment where the segment is present, each frame referencing its source slice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .dicom import SeriesGeometry
from .errors import VolsslInputError

__all__ = ["SEG_SOP_CLASS", "read_segmentation", "segment_names", "write_segmentation"]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def write_segmentation(
    label: np.ndarray,
    geometry: SeriesGeometry,
    names: Mapping[int, str],
    path,
    algorithm: str = "volssl",
    version: str = "0",
    series_description: str | None = None,
) -> Path:
    """Write ``label`` (integer classes, ``(x, y, z)`` on ``geometry``'s grid) as a DICOM SEG at ``path``,
    atomically.

    Args:
        label: the label map, shape ``geometry.shape``; 0 is background.
        geometry: the checked source series (its files are read for their headers).
        names: ``{class index: name}`` of the foreground classes (0, if present, is ignored); every value of
            ``label`` but 0 must be named.
        path: the ``.dcm`` file to write.
        algorithm: the algorithm's name (the bundle), recorded as the segments' algorithm and the model name.
        version: the algorithm's version.
        series_description: of the new SEG series (default: ``"<algorithm> segmentation"``).

    Raises:
        VolsslInputError: a label map of another shape than the series, or values without a name.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    label = np.asarray(label)
    if tuple(label.shape) != tuple(geometry.shape):
        raise VolsslInputError(
            path, f"label map {tuple(label.shape)} is not on the source series' grid {tuple(geometry.shape)}"
        )
    classes = {int(k): str(v) for k, v in names.items() if int(k) != 0}
    present = {int(v) for v in np.unique(label)} - {0}
    unnamed = sorted(present - set(classes))
    if unnamed:
        raise VolsslInputError(path, f"label values {unnamed} have no name (named: {sorted(classes)})")
    if not classes:
        raise VolsslInputError(path, "no foreground class is named: a SEG needs at least one segment")
    if sorted(classes) != list(range(1, max(classes) + 1)):
        raise VolsslInputError(path, f"class indices must be 1..N, got {sorted(classes)}")
    sources = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in geometry.files]
    family = codes.cid7162.ArtificialIntelligence
    identification = hd.AlgorithmIdentificationSequence(name=algorithm[:64], version=str(version)[:64], family=family)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=index,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for index, name in sorted(classes.items())
    ]
    frames = np.ascontiguousarray(np.transpose(label, (2, 1, 0))).astype(np.uint8)  # (slices, rows, columns)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=_series_number(sources[0]),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="volssl",
        manufacturer_model_name=algorithm[:64],
        software_versions=str(version)[:64],
        device_serial_number="0",
        series_description=(series_description or f"{algorithm} segmentation")[:64],
        content_label="SEGMENTATION",
        content_description=f"automatic segmentation by {algorithm} {version}"[:64],
        content_creator_name="volssl^",  # a person name: family^given
    )
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return path


def _series_number(source) -> int:
    """A series number for the SEG that differs from its source's (the source's + 1000, as viewers sort them)."""
    try:
        return int(source.SeriesNumber) + 1000
    except (AttributeError, TypeError, ValueError):
        return 1000


def segment_names(seg_path) -> dict[int, str]:
    """``{segment number: segment label}`` of a SEG file."""
    import pydicom

    ds = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    return {
        int(s.SegmentNumber): str(getattr(s, "SegmentLabel", f"segment {s.SegmentNumber}"))
        for s in getattr(ds, "SegmentSequence", [])
    }


def read_segmentation(seg_path, geometry: SeriesGeometry) -> tuple[np.ndarray, dict[int, str]]:
    """The label map ``(x, y, z)`` of a SEG on its source series' grid, and its segment names.

    Frames are placed by the source instance each one references (DerivationImageSequence), so the SEG may hold any
    subset of the slices; overlapping segments keep the highest segment number.

    Raises:
        VolsslInputError: naming the SEG file: not a SEG, fractional (probability) segmentations, or frames that
            reference no slice of this series.
    """
    import highdicom as hd

    seg_path = Path(seg_path)
    try:
        seg = hd.seg.segread(str(seg_path))
    except Exception as err:  # highdicom raises several types for non-SEG or damaged files
        raise VolsslInputError(seg_path, f"not a readable DICOM SEG ({type(err).__name__}: {err})") from err
    if str(seg.SegmentationType) != "BINARY":
        raise VolsslInputError(seg_path, f"a {seg.SegmentationType} segmentation; only BINARY ones are read as labels")
    names = {
        int(s.SegmentNumber): str(getattr(s, "SegmentLabel", f"segment {s.SegmentNumber}")) for s in seg.SegmentSequence
    }
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    known = [uid for uid in geometry.sop_instance_uids if uid in referenced]
    if not known:
        raise VolsslInputError(seg_path, "its frames reference no slice of the series it is read onto")
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=known, combine_segments=True, skip_overlap_checks=True
        )
    except Exception as err:
        raise VolsslInputError(seg_path, f"cannot place its frames on the source slices ({err})") from err
    label = np.zeros(geometry.shape, dtype=np.uint8)
    slice_of = {uid: k for k, uid in enumerate(geometry.sop_instance_uids)}
    for frame, uid in zip(pixels, known):
        label[:, :, slice_of[uid]] = np.asarray(frame).T
    return label, names
