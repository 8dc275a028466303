"""Let MONAI Label 0.8.5 start beside a CPU build of torch, where no working torchvision can be installed.

MONAI Label's bundle inference task imports ``monailabel.transform.post``, which imports ``make_grid`` and
``save_image`` from ``torchvision.utils`` at module level; only its 2D debug-dump transforms call them, and none of
the volssl bundles uses those. PyPI's torchvision is a CUDA build: beside a CPU torch it fails to import
("operator torchvision::nms does not exist"), so ``tools/monailabel.sh setup`` installs none on a CPU torch.
This module then registers a minimal ``torchvision.utils`` whose two functions raise a clear error if ever called.
Where a working torchvision is installed (a CUDA machine), nothing is replaced.
"""

from __future__ import annotations

import sys
import types

STAND_IN_FLAG = "__volssl_stand_in__"


def _unavailable(name: str, reason: str):
    def function(*args, **kwargs):
        raise ImportError(
            f"torchvision.utils.{name} is not available in this MONAI Label environment ({reason}); "
            "only MONAI Label's 2D debug dumps use it. Install a torchvision that matches torch to use them."
        )

    function.__name__ = name
    return function


def provide_torchvision_utils_if_missing() -> bool:
    """Register the stand-in ``torchvision.utils`` when torchvision cannot be imported; True when it did."""
    try:
        import torchvision.utils  # noqa: F401
    except Exception as error:  # noqa: BLE001 - ImportError if absent, RuntimeError if CUDA-built beside CPU torch
        reason = f"{type(error).__name__}: {error}"
    else:
        return False
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    package = types.ModuleType("torchvision")
    utils = types.ModuleType("torchvision.utils")
    for function_name in ("make_grid", "save_image"):
        setattr(utils, function_name, _unavailable(function_name, reason))
    package.utils = utils
    setattr(package, STAND_IN_FLAG, True)
    setattr(utils, STAND_IN_FLAG, True)
    sys.modules["torchvision"] = package
    sys.modules["torchvision.utils"] = utils
    return True
