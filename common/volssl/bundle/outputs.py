"""Writing the label maps of an inference run: on the input's grid, atomically, and saying where."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImaged

from ..data.datalist import case_id
from ..io import save_nifti

__all__ = ["SaveSegmentationd"]

logger = logging.getLogger("volssl.outputs")


class SaveSegmentationd(SaveImaged):
    """Write ``pred`` (a channel-first label map ``(1, X, Y, Z)`` carrying its image's metadata) as
    ``<output_dir>/<case><output_postfix>.nii.gz`` with the image's affine, as ``uint8``.

    Unlike MONAI's ``SaveImaged`` the file is written to a temporary name and renamed (an interrupted run never leaves
    a half-written file where a good one was, and a failed case never touches it), and each written path is logged.
    It subclasses ``SaveImaged`` so that MONAI Label, which removes ``SaveImaged`` from a bundle's postprocessing and
    returns the label map itself, removes it too.

    Args:
        keys: the key of the label map (``"pred"``).
        output_dir: the output folder (created when missing).
        output_postfix: appended to the case name (``"_seg"`` gives ``<case>_seg.nii.gz``).
    """

    def __init__(self, keys="pred", output_dir="./eval", output_postfix: str = "_seg") -> None:
        super().__init__(keys=keys, output_dir=output_dir, output_postfix=output_postfix.lstrip("_"),
                         separate_folder=False, print_log=False)
        self.out_dir = Path(output_dir)
        self.suffix = output_postfix

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if not isinstance(pred, MetaTensor) or "filename_or_obj" not in pred.meta:
                raise ValueError(f"{key} must be a MetaTensor carrying its image's metadata (filename_or_obj, affine)")
            array = torch.as_tensor(pred).detach().cpu().numpy()
            array = array[0] if array.ndim == 4 else array
            path = self.out_dir / f"{case_id(pred.meta['filename_or_obj'])}{self.suffix}.nii.gz"
            save_nifti(array.astype(np.uint8), np.asarray(pred.affine, dtype=np.float64), path)
            logger.info(f"wrote {path}")
        return d
