"""Writing the label maps of an inference run: on the input's grid, atomically, and saying where.

Two formats: NIfTI (``<case>_seg.nii.gz`` with the input's affine; for a DICOM input the series' grid and
orientation, as ITK read it) and DICOM SEG (``<case>_seg.dcm``, for DICOM inputs: a Segmentation object referencing
the source series, one segment per class named as in the bundle's ``metadata.json``; see :mod:`volssl.io.dicom_seg`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImaged

from ..data.datalist import case_id
from ..io import VolsslInputError, save_nifti
from .inputs import CASE_KEY, OUTPUT_FORMATS

__all__ = ["SaveSegmentationd", "label_names", "segment_naming"]

logger = logging.getLogger("volssl.outputs")


def label_names(metadata_file) -> dict[int, str]:
    """``{class index: name}`` of a bundle's output (``network_data_format.outputs.pred.channel_def`` of its
    ``metadata.json``); class 0, the background, included."""
    meta = json.loads(Path(metadata_file).read_text())
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    return {int(k): str(v) for k, v in pred.get("channel_def", {}).items()}


def segment_naming(bundle_root) -> tuple[dict[int, str], str, str]:
    """The class names, the algorithm's name and its version that a DICOM SEG records: from the bundle's
    ``configs/metadata.json`` (an exported bundle: the names of its training data), else, for a training run's
    bundle root in this repository, from its ``models/training_record.json`` (the training datalist's ``labels``).

    Raises:
        VolsslInputError: neither file names the classes.
    """
    root = Path(bundle_root)
    metadata, record = root / "configs" / "metadata.json", root / "models" / "training_record.json"
    if metadata.is_file():
        meta = json.loads(metadata.read_text())
        names = label_names(metadata)
        if names:
            return names, str(meta.get("name", root.name)), str(meta.get("version", "0"))
    if record.is_file():
        content = json.loads(record.read_text())
        if content.get("labels"):
            names = {int(k): str(v) for k, v in content["labels"].items()}
            return names, root.name, str(content.get("volssl_version", "0"))
    raise VolsslInputError(
        root, f"the class names of a DICOM SEG come from {metadata} or the 'labels' of {record}, and neither is there"
    )


class SaveSegmentationd(SaveImaged):
    """Write ``pred`` (a channel-first label map ``(1, X, Y, Z)`` carrying its image's metadata) as
    ``<output_dir>/<case><output_postfix>.nii.gz`` with the image's affine, as ``uint8``, or, with
    ``output_format="dicom_seg"``, as a DICOM SEG ``<case><output_postfix>.dcm`` onto the source series.

    ``<case>`` is the data's ``case`` key where :class:`~volssl.bundle.InferenceInputs` set it (DICOM series folders
    under one input folder: their path below it), else the image's file name without extension.

    Unlike MONAI's ``SaveImaged`` the file is written to a temporary name and renamed (an interrupted run never leaves
    a half-written file where a good one was, and a failed case never touches it), and each written path is logged.
    It subclasses ``SaveImaged`` so that MONAI Label, which removes ``SaveImaged`` from a bundle's postprocessing and
    returns the label map itself, removes it too.

    Args:
        keys: the key of the label map (``"pred"``).
        output_dir: the output folder (created when missing).
        output_postfix: appended to the case name (``"_seg"`` gives ``<case>_seg.nii.gz``).
        output_format: ``"nifti"`` or ``"dicom_seg"``.
        bundle_root: the bundle (or training run) folder, for the segment names, the bundle's name and version of a
            SEG (:func:`segment_naming`).
        series_uid: the series pick of the inputs (a folder holding several image series), to find the source
            series of a SEG again.
    """

    def __init__(
        self,
        keys="pred",
        output_dir="./eval",
        output_postfix: str = "_seg",
        output_format: str = "nifti",
        bundle_root=".",
        series_uid=None,
    ) -> None:
        super().__init__(
            keys=keys,
            output_dir=output_dir,
            output_postfix=output_postfix.lstrip("_"),
            separate_folder=False,
            print_log=False,
        )
        if output_format not in OUTPUT_FORMATS:
            raise VolsslInputError("output_format", f"must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        self.out_dir = Path(output_dir)
        self.suffix = output_postfix
        self.output_format = output_format
        self.bundle_root = bundle_root
        self.series_uid = series_uid

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if not isinstance(pred, MetaTensor) or "filename_or_obj" not in pred.meta:
                raise ValueError(f"{key} must be a MetaTensor carrying its image's metadata (filename_or_obj, affine)")
            array = torch.as_tensor(pred).detach().cpu().numpy()
            array = (array[0] if array.ndim == 4 else array).astype(np.uint8)
            source = str(pred.meta["filename_or_obj"])
            case = d.get(CASE_KEY) or case_id(source)
            if self.output_format == "dicom_seg":
                path = self._write_seg(array, source, self.out_dir / f"{case}{self.suffix}.dcm")
            else:
                path = save_nifti(
                    array, np.asarray(pred.affine, dtype=np.float64), self.out_dir / f"{case}{self.suffix}.nii.gz"
                )
            logger.info(f"wrote {path}")
        return d

    def _write_seg(self, label: np.ndarray, source: str, path: Path) -> Path:
        from ..io.dicom import check_series, select_series
        from ..io.dicom_seg import write_segmentation

        if not Path(source).is_dir():
            raise VolsslInputError(source, "a DICOM SEG is written onto a DICOM source series; this input is not one")
        names, algorithm, version = segment_naming(self.bundle_root)
        series, _ = select_series(source, self.series_uid)
        geometry = check_series(series, source)
        return write_segmentation(
            label,
            geometry,
            names,
            path,
            algorithm=algorithm,
            version=version,
            series_description=f"{algorithm} (automatic)",
        )
