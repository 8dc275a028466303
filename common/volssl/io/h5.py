"""h5 reading (the preprocessed files of SSL4MIS and UA-MT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import VolsslInputError

__all__ = ["read_h5"]


def read_h5(path, keys=("image", "label"), attrs: bool = False):
    """Read the datasets ``keys`` from an h5 file.

    Returns a dict of numpy arrays, plus the file attributes under ``"attrs"`` when ``attrs`` is true.

    Raises:
        VolsslInputError: missing file, a file h5py cannot open (corrupt or truncated), or a missing dataset.
    """
    import h5py  # only the converters read h5: the bundles do not declare h5py

    path = Path(path)
    if not path.is_file():
        raise VolsslInputError(path, "file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                raise VolsslInputError(path, f"missing dataset(s) {missing}; the file has {sorted(f.keys())}")
            out = {k: np.asarray(f[k][()]) for k in keys}
            if attrs:
                out["attrs"] = {k: np.asarray(v) for k, v in f.attrs.items()}
    except VolsslInputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise VolsslInputError(path, f"cannot read h5 (corrupt or truncated file): {err}") from err
    return out
