"""volssl: shared package of the volssl MONAI bundles (label-efficient 3D medical image segmentation).

Sub-packages, one job each:

- :mod:`volssl.io`: reading and writing NIfTI, h5 and DICOM (series in through ITK, SEG out) with clear errors on
  bad input.
- :mod:`volssl.data`: the datalist format, splits, converters for the papers' data and the synthetic phantoms.
- :mod:`volssl.metrics`: per-case 3D metrics, pooled-slice 2D Dice and folder evaluation.
- :mod:`volssl.networks`, :mod:`volssl.losses`, :mod:`volssl.engines`: the methods' networks, losses and Ignite steps.
- :mod:`volssl.inferers`: whole-slice and fitted sliding-window inference (cost follows the image).
- :mod:`volssl.bundle`: what the bundle configs call at their boundary (required files, error messages, the
  training record).

Importing it needs only what the bundles' ``metadata.json`` declares (torch, monai, numpy, nibabel, pytorch-ignite,
tqdm, scipy; tensorboard, matplotlib, itk, pydicom and highdicom are imported where used); h5py is imported by the
converters only.
"""

__version__ = "0.1.0"

# bundle configs bind `$import volssl` and then reach `volssl.data...`, `volssl.networks...`: import them eagerly
from . import bundle, data, engines, inferers, io, losses, metrics, networks  # noqa: E402,F401
