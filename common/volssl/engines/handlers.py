"""Ignite handlers shared by the bundles: resume from the latest checkpoint, learning-curve CSV + PNG."""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

__all__ = ["latest_checkpoint", "ResumeFromLatest", "LearningCurveWriter"]

_EPOCH_RE = re.compile(r"epoch=(\d+)")


def latest_checkpoint(ckpt_dir, pattern: str = "checkpoint_epoch=*.pt") -> Path | None:
    """The checkpoint in ``ckpt_dir`` with the highest ``epoch=N`` in its name (MONAI ``CheckpointSaver``'s interval
    files), or ``None`` when there is none."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob(pattern) if (m := _EPOCH_RE.search(p.name))]
    return max(found)[1] if found else None


class ResumeFromLatest:
    """Resume a run from the latest interval checkpoint in ``ckpt_dir`` (if any), with MONAI's ``CheckpointLoader``.

    ``load_dict`` names what to restore (network, optimizer, loss parameters, LR scheduler, trainer state); the trainer
    then continues from the saved epoch. Files are read with ``torch.load(weights_only=True)``. With ``enabled=False``
    or no checkpoint, the run starts from scratch (and says so in the log).
    """

    def __init__(self, ckpt_dir, load_dict: Mapping, enabled: bool = True, map_location=None, strict: bool = True):
        self.ckpt_dir = ckpt_dir
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.map_location = map_location
        self.strict = strict
        self.logger = logging.getLogger("volssl.resume")

    def attach(self, engine: Engine) -> None:
        path = latest_checkpoint(self.ckpt_dir) if self.enabled else None
        if path is None:
            self.logger.info(f"no checkpoint to resume from in {self.ckpt_dir}: starting from scratch")
            return
        self.logger.info(f"resuming from {path}")
        CheckpointLoader(
            load_path=str(path), load_dict=self.load_dict, map_location=self.map_location, strict=self.strict
        ).attach(engine)


class LearningCurveWriter:
    """Record per-epoch scalars and write ``<name>.csv`` and ``<name>.png`` (learning curves) in ``output_dir``.

    Records the mean of the trainer's scalar outputs over each epoch (``loss`` and any loss terms) and, if an
    ``evaluator`` is given, its metrics after each validation. Files are rewritten after every epoch, so an
    interrupted run keeps its curve; a resumed run appends to the existing CSV.
    """

    def __init__(self, output_dir, name: str = "learning_curve", evaluator: Engine | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.name = name
        self.evaluator = evaluator
        self.rows: list[dict] = []
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        csv_path = self.output_dir / f"{self.name}.csv"
        if csv_path.is_file():
            with open(csv_path) as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_done)

    def _accumulate(self, engine: Engine) -> None:
        out = engine.state.output
        out = out[0] if isinstance(out, list) and out else out
        if not isinstance(out, Mapping):
            return
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (int, float)):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._count += 1

    def _epoch_done(self, engine: Engine) -> None:
        row = {"epoch": float(engine.state.epoch)}
        row.update({f"train_{k}": v / max(self._count, 1) for k, v in self._sums.items()})
        if self.evaluator is not None and self.evaluator.state.metrics:
            row.update({f"val_{k}": float(v) for k, v in self.evaluator.state.metrics.items() if _is_number(v)})
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        self._sums, self._count = {}, 0
        self.write()

    def write(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "epoch", k))
        tmp = self.output_dir / f".tmp_{self.name}.csv"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.output_dir / f"{self.name}.csv")
        from ..viz import plot_learning_curves

        plot_learning_curves(self.rows, self.output_dir / f"{self.name}.png")


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
