"""The training record: what a run's weights were trained with, next to the weights.

A bundle's configs are combined with overlays (``cpu_small.json``) and command-line overrides (``--n_filters 8``) at
run time; the weights only load into a network built with the same values. ``train.json`` and ``pretrain.json``
therefore write ``models/training_record.json`` (or ``models/pretraining_record.json``) when a run starts::

    {
      "values": {"features": 16, "num_classes": 4, "patch_size": [64, 64], ...},   # the config's "trained_values"
      "labels": {"0": "background", "1": "shell", ...},    # from the datalist, when it has them
      "training_data": {"num_images": 2, "spacing_mm": {...}, "shape": {...}, "intensity": {...}},
      "command": ["-m", "monai.bundle", "run", ...],      # how the run was started, when known
      "volssl_version": "0.1.0", "created": "2026-11-30T12:00:00"
    }

``tools/export_bundle.py`` folds ``values`` into every exported config that defines them (so ``inference.json`` alone
loads ``models/model.pt``), ``labels`` into ``metadata.json``, and ``training_data`` into ``inference.json``'s
``expected_input`` (the reference for the out-of-distribution warnings at inference).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import VolsslInputError, load_nifti, spacing_from_affine

__all__ = [
    "RECORD_NAME",
    "apply_recorded_values",
    "read_training_record",
    "training_data_stats",
    "write_training_record",
]

RECORD_NAME = "training_record.json"
MAX_STAT_IMAGES = 16  # statistics from at most this many training images: enough for ranges, bounded cost


def _plain(value):
    """JSON-ready copy of a config value (tuples and numpy scalars become lists and numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"trained value of type {type(value).__name__} cannot be recorded: {value!r}")


def training_data_stats(data: Sequence[Mapping], image_key: str = "image", max_images: int = MAX_STAT_IMAGES) -> dict:
    """Spacing, shape and intensity statistics of (at most ``max_images`` of) the training images.

    Returns ``{"num_images", "num_measured", "spacing_mm": {"min", "median", "max"}, "shape": {"min", "max"},
    "intensity": {"p01_median", "p99_median", "p01_min", "p99_max"}}``: per-image 1st and 99th percentiles of the raw
    intensities, summarised over the images. Unreadable files raise :class:`VolsslInputError`.
    """
    paths = [entry[image_key] for entry in data if isinstance(entry, Mapping) and entry.get(image_key)]
    measured = paths[:: max(1, -(-len(paths) // max_images))][:max_images]
    spacings, shapes, p01, p99 = [], [], [], []
    for path in measured:
        image, affine = load_nifti(path)
        spacings.append(spacing_from_affine(affine))
        shapes.append(image.shape)
        lo, hi = np.percentile(image[np.isfinite(image)], [1, 99]) if np.isfinite(image).any() else (0.0, 0.0)
        p01.append(float(lo))
        p99.append(float(hi))
    if not measured:
        return {"num_images": len(paths), "num_measured": 0}
    spacing = np.asarray(spacings)
    shape = np.asarray(shapes)
    return {
        "num_images": len(paths),
        "num_measured": len(measured),
        "spacing_mm": {
            "min": [round(float(s), 4) for s in spacing.min(0)],
            "median": [round(float(s), 4) for s in np.median(spacing, 0)],
            "max": [round(float(s), 4) for s in spacing.max(0)],
        },
        "shape": {"min": [int(s) for s in shape.min(0)], "max": [int(s) for s in shape.max(0)]},
        "intensity": {
            "p01_median": float(np.median(p01)),
            "p99_median": float(np.median(p99)),
            "p01_min": float(np.min(p01)),
            "p99_max": float(np.max(p99)),
        },
    }


def _command_line() -> list[str] | None:
    """``python -m monai.bundle ...`` as this process was started, or ``None`` when it was not (a server, a test)."""
    argv0 = sys.argv[0].replace(os.sep, "/") if sys.argv else ""
    return ["python", "-m", "monai.bundle", *sys.argv[1:]] if argv0.endswith("monai/bundle/__main__.py") else None


def _labels_of(datalist) -> dict | None:
    """The datalist's ``labels`` (index -> name) when the datalist is a readable file that has them."""
    try:
        path = Path(str(datalist))
        if not path.is_file():
            return None
        labels = json.loads(path.read_text()).get("labels")
    except (OSError, ValueError, AttributeError):
        return None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else None


def write_training_record(
    ckpt_dir, values: Mapping, data: Sequence[Mapping] = (), datalist=None, name: str = RECORD_NAME
) -> Path | None:
    """Write the training record ``<ckpt_dir>/<name>`` (atomically) and return its path; rank 0 only under DDP.

    Args:
        ckpt_dir: the run's ``models`` folder.
        values: the config values the weights depend on (the config's ``trained_values``).
        data: the training entries (``[{"image": ...}, ...]``) for :func:`training_data_stats`.
        datalist: the datalist file, read for its ``labels`` when it exists (MONAI Label injects data instead).
        name: the record's file name.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
        return None
    from .. import __version__

    record = {
        "values": _plain(dict(values)),
        "labels": _labels_of(datalist) if datalist is not None else None,
        "training_data": training_data_stats(list(data)) if data else None,
        "command": _command_line(),
        "volssl_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = Path(ckpt_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_training_record(path) -> dict:
    """Read a training record written by :func:`write_training_record`.

    Raises:
        VolsslInputError: a missing file, invalid JSON or a record without ``values``.
    """
    path = Path(path)
    if not path.is_file():
        raise VolsslInputError(
            path, "training record not found: train with this version's train.json (it writes the record) first"
        )
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise VolsslInputError(path, f"not valid JSON: {err}") from err
    if not isinstance(record, Mapping) or not isinstance(record.get("values"), Mapping):
        raise VolsslInputError(path, "not a training record (no 'values' object)")
    return dict(record)


def apply_recorded_values(
    parser, record_path, given: Mapping[str, tuple] | None = None, keys: Sequence[str] | None = None
) -> dict:
    """Set the values a run recorded in ``record_path`` on ``parser`` (a MONAI ``ConfigParser``), so that a tool
    rebuilds the run's network without the overlays and overrides being repeated; returns the values set.

    Args:
        parser: the config the tool builds the network from.
        record_path: the run's ``models/training_record.json`` or ``models/pretraining_record.json``.
        given: what the user passed explicitly, ``{key: (value, "where from")}`` (e.g. ``(16, "cpu_small.json")``).
        keys: the recorded keys that define the network and its input (default: all recorded keys); only these are
            set and checked, the others (epochs, learning rates) do not change the weights' network.

    Raises:
        VolsslInputError: naming the record, when a value in ``given`` differs from the recorded one (both shown).
    """
    values = read_training_record(record_path)["values"]
    wanted = [k for k in (values if keys is None else keys) if k in values]
    for key in wanted:
        if given and key in given and _plain(given[key][0]) != values[key]:
            value, origin = given[key]
            raise VolsslInputError(
                record_path,
                f"the run recorded {key}={values[key]!r}, but {origin} sets "
                f"{key}={_plain(value)!r}; leave it out (the record is read) or probe another run",
            )
    applied = {key: values[key] for key in wanted if key in parser}
    for key, value in applied.items():
        parser[key] = value
    return applied
