"""volssl: shared package of the volssl MONAI bundles (label-efficient 3D medical image segmentation).

Sub-packages, one job each:

- :mod:`volssl.io`: reading and writing NIfTI and h5 files with clear errors on bad input.
- :mod:`volssl.data`: the datalist format, splits, converters for the papers' data and the synthetic phantoms.
- :mod:`volssl.metrics`: per-case 3D metrics, pooled-slice 2D Dice and folder evaluation.
"""

__version__ = "0.1.0"

# bundle configs bind `$import volssl` and then reach `volssl.data...`, `volssl.networks...`: import them eagerly
from . import data, engines, io, losses, metrics, networks  # noqa: E402,F401
