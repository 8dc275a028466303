"""The ``python -m monai.bundle run`` command line the tools run (the main job and the comparisons), built in one place.

The scripts run as ``python tools/<script>.py`` so ``tools/`` is ``sys.path[0]`` and ``import bundle_cli`` works.
"""

from __future__ import annotations

import ast
from pathlib import Path


def _fire_arg(value) -> str:
    """``value`` as fire reads it back: Python literals (``repr``; JSON ``false`` would arrive as the truthy string
    "false"), and a plain string as it is unless fire would read it as something else (``"True"``, ``"1e-3"``)."""
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return repr(value)


def override_args(overrides: dict) -> list[str]:
    """``--key value`` pairs for ``python -m monai.bundle run``."""
    return [item for key, value in overrides.items() for item in (f"--{key}", _fire_arg(value))]


def bundle_command(configs: list[Path], bundle_root: Path, dataset_dir: Path, overrides: dict) -> list[str]:
    """The arguments after ``python``: the configs merged in order, the bundle root, the dataset folder, the bundle's
    ``logging.conf`` (next to the first config) and the overrides."""
    config_arg = "[" + ",".join(f'"{c}"' for c in configs) + "]"  # double quotes: a readable shell-quoted command
    return ["-m", "monai.bundle", "run", "--config_file", config_arg, "--bundle_root", str(bundle_root),
            "--dataset_dir", str(dataset_dir), "--logging_file", str(configs[0].parent / "logging.conf"),
            *override_args(overrides)]
