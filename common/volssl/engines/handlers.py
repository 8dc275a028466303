"""Ignite handlers shared by the bundles: resume from the latest checkpoint, learning-curve CSV + PNG."""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

__all__ = [
    "BestModelSaver",
    "EpochProgress",
    "EpochSnapshotSaver",
    "LearningCurveWriter",
    "ResumeFromLatest",
    "latest_checkpoint",
]

_EPOCH_RE = re.compile(r"epoch=(\d+)")


def latest_checkpoint(ckpt_dir, pattern: str = "checkpoint_epoch=*.pt") -> Path | None:
    """The checkpoint in ``ckpt_dir`` with the highest ``epoch=N`` in its name (MONAI ``CheckpointSaver``'s interval
    files), or ``None`` when there is none."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob(pattern) if (m := _EPOCH_RE.search(p.name))]
    return max(found)[1] if found else None


def _add_scalars(sums: dict, out: Mapping) -> None:
    """Add the scalar entries of an iteration's output to ``sums``: numbers as floats, one-element tensors as
    detached tensors on their device (read once per epoch, so that a GPU is not synchronised every iteration)."""
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
            value = value.detach().reshape(()).float()
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        sums[key] = sums.get(key, 0.0) + value


class ResumeFromLatest:
    """Resume a run from the latest interval checkpoint in ``ckpt_dir`` (if any), with MONAI's ``CheckpointLoader``.

    ``load_dict`` names what to restore (network, optimizer, loss parameters, LR scheduler, trainer state); the trainer
    then continues from the saved epoch. Files are read with ``torch.load(weights_only=True)``. With ``enabled=False``
    or no checkpoint, the run starts from scratch (and says so in the log).

    Only an interrupted run is resumed: one whose newest checkpoint is short of its own ``max_epochs`` and of the
    epochs now asked for. A finished run (what a completed command, or an earlier MONAI Label ``/train`` request,
    leaves behind) is never resumed: its checkpoints are moved aside into ``previous_<time>/`` (the one set aside
    before is deleted, so that repeated requests do not fill the disk) and a new run starts, initialised as the config
    says (``init_weights``, the pretrained encoder, or a ``CheckpointLoader`` of ``models/model.pt`` as MONAI Label
    adds). To train a finished model further, start a new run from it with ``--init_weights models/model.pt``.

    A resumed ``CheckpointSaver`` does not know the files of the interrupted run, so this handler also prunes, at each
    epoch end, the interval checkpoints older than the newest one (``keep_only_latest``).
    """

    def __init__(
        self,
        ckpt_dir,
        load_dict: Mapping,
        enabled: bool = True,
        map_location=None,
        strict: bool = True,
        keep_only_latest: bool = True,
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.keep_only_latest = keep_only_latest
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.map_location = map_location
        self.strict = strict
        self.logger = logging.getLogger("volssl.resume")

    def _prune(self, engine: Engine) -> None:
        # registered after the CheckpointSaver: once this epoch's file exists, the earlier ones can go
        newest = latest_checkpoint(self.ckpt_dir)
        m = _EPOCH_RE.search(newest.name) if newest is not None else None
        if m is None or int(m.group(1)) != engine.state.epoch:
            return
        for old in Path(self.ckpt_dir).glob("checkpoint_epoch=*.pt"):
            if old != newest and _EPOCH_RE.search(old.name) and _rank() == 0:
                old.unlink(missing_ok=True)

    def _newest_readable(self) -> tuple[Path, Mapping] | tuple[None, None]:
        """The newest interval checkpoint that loads, and its content; a file cut short by an interruption during its
        write (MONAI's saver does not write atomically) is moved aside with a warning, and the previous one is used."""
        while (path := latest_checkpoint(self.ckpt_dir)) is not None:
            try:
                return path, torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unreadable file is treated the same way
                broken = path.with_name(f"{path.name}.unreadable")
                os.replace(path, broken)
                self.logger.warning(f"{path} cannot be read ({type(err).__name__}: {err}); moved to {broken}")
        return None, None

    def _set_aside(self, why: str) -> None:
        """Move an earlier run's checkpoints into a dated subfolder instead of mixing them with the new run's; the
        folder set aside before goes (one earlier run is kept for inspection, not every one)."""
        old = sorted(Path(self.ckpt_dir).glob("checkpoint_epoch=*.pt"))
        if not old or _rank() > 0:
            return
        for earlier in Path(self.ckpt_dir).glob("previous_*"):
            shutil.rmtree(earlier, ignore_errors=True)
        aside = Path(self.ckpt_dir) / time.strftime("previous_%Y%m%d-%H%M%S")
        aside.mkdir(parents=True, exist_ok=True)
        for path in old:
            os.replace(path, aside / path.name)
        self.logger.warning(f"{why}; moved {len(old)} earlier checkpoint(s) to {aside}")

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            self._set_aside("resume disabled")
        if self.keep_only_latest:
            # at STARTED every handler of the config is attached, so this one runs after the CheckpointSaver
            engine.add_event_handler(Events.STARTED, lambda e: e.add_event_handler(Events.EPOCH_COMPLETED, self._prune))
        path, content = self._newest_readable() if self.enabled else (None, None)
        progress = _progress(content)
        if path is not None and progress is not None:
            done, planned = progress
            if done >= planned:
                self._set_aside(f"{path.name} is from a finished run (epoch {done} of {planned}): a new run starts")
                path = None
            elif done >= int(engine.state.max_epochs):
                asked = engine.state.max_epochs
                self._set_aside(f"{path.name} has {done} epochs, this run asks for {asked}: a new run starts")
                path = None
        if path is None:
            self.logger.info(f"no checkpoint to resume from in {self.ckpt_dir}: starting a new run")
            return
        self.logger.info(f"resuming from {path}")
        load_dict = self.load_dict
        absent = [key for key in load_dict if key not in content] if isinstance(content, Mapping) else []
        if absent:
            # a checkpoint written before a config gained a resumable object (e.g. a second best-model saver):
            # the objects it has are restored, the new ones start fresh
            self.logger.warning(
                f"{path.name} holds no state for {absent} (written by an earlier version of the "
                "config): those start fresh, the rest is resumed"
            )
            load_dict = {key: obj for key, obj in load_dict.items() if key not in absent}
        CheckpointLoader(
            load_path=str(path), load_dict=load_dict, map_location=self.map_location, strict=self.strict
        ).attach(engine)


class BestModelSaver:
    """Save the network when the evaluator's key metric improves: ``save_path`` holds the network's plain state dict
    (the model-zoo ``models/model.pt`` layout that ``CheckpointLoader``, ``ckpt_export`` and MONAI Label read).

    Attach to the validation evaluator. The file is written atomically (temporary file + rename), so an interrupted
    write never leaves a broken model. The best value and its epoch are state (``state_dict``/``load_state_dict``):
    put this object in the resume checkpoint so that a resumed run does not replace a better model by a worse one.
    Under ``torch.distributed`` only rank 0 writes.

    Args:
        save_path: the output file, e.g. ``models/model.pt``.
        network: the network to save (a ``DistributedDataParallel`` wrapper is unwrapped).
        metric_name: the key in ``evaluator.state.metrics`` to track.
        mode: ``"max"`` (Dice) or ``"min"`` (a distance); or ``"last"``: save at every validation whatever the
            value, so the file holds the model of the last validated epoch (the released CORAL/PCL fine-tuning
            reports its last epoch: ``paper_finetune.json``; validate at the last epoch, e.g. ``val_interval``
            dividing ``epochs``). The metric is still logged and tracked as the best seen.
        network_name: how the log names the saved network (e.g. ``"teacher"``); ``None``: not named.
    """

    def __init__(
        self, save_path, network: torch.nn.Module, metric_name: str, mode: str = "max", network_name: str | None = None
    ) -> None:
        if mode not in ("max", "min", "last"):
            raise ValueError(f"mode must be 'max', 'min' or 'last', got {mode!r}")
        self.save_path = Path(save_path)
        self.network = network
        self.metric_name = metric_name
        self.mode = mode
        self.network_name = network_name
        self.best_metric = -float("inf") if mode == "max" else float("inf")
        self.best_epoch = -1
        self.logger = logging.getLogger("volssl.best_model")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _improved(self, value: float) -> bool:
        return value < self.best_metric if self.mode == "min" else value > self.best_metric

    def __call__(self, engine: Engine) -> None:
        if self.metric_name not in engine.state.metrics:
            raise KeyError(f"metric {self.metric_name!r} not computed by the evaluator: {sorted(engine.state.metrics)}")
        value = float(engine.state.metrics[self.metric_name])
        improved = value == value and self._improved(value)  # NaN never counts as an improvement
        if improved:
            self.best_metric, self.best_epoch = value, int(engine.state.epoch)
        if not improved and self.mode != "last":
            return
        if _rank() > 0:
            return
        net = self.network.module if hasattr(self.network, "module") else self.network
        self.save_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.save_path.with_name(f".tmp_{self.save_path.name}")
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, self.save_path)
        which = f"{self.network_name}, " if self.network_name else ""
        rule = "last" if self.mode == "last" else "best"
        self.logger.info(
            f"epoch {int(engine.state.epoch)}: {which}{rule} {self.metric_name} {value:.4f}, saved {self.save_path}"
        )

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping) -> None:
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])


class EpochSnapshotSaver:
    """Keep the state of some objects at chosen epochs: ``<save_dir>/<prefix>_epoch<N>.pt`` after epoch ``N``.

    For a pretraining budget curve: one pretraining run whose encoder is kept along the way (e.g. after epochs 50,
    200 and 800 of an 800-epoch run), each snapshot in the layout of the final ``pretrain.pt`` (``{"network": ...,
    "loss": ...}``), so fine-tuning loads any of them with ``pretrained_ckpt``. A snapshot is never overwritten by a
    later epoch and is written atomically; a run resumed after epoch ``N`` keeps the snapshot it wrote (the resume
    checkpoint continues from the epoch after it), and one interrupted before epoch ``N`` writes it when it gets
    there. Note that a snapshot at epoch ``N`` of a longer run is not a run of ``N`` epochs: the cosine learning-rate
    schedule spans the whole run, so at epoch ``N`` the rate has not decayed yet. Under ``torch.distributed`` only
    rank 0 writes.

    Args:
        save_dir: the folder (the bundle's ``models/``).
        save_dict: ``{name: object with state_dict()}``, e.g. the network and the loss (CORAL's learnable OAL
            direction); a ``DistributedDataParallel`` wrapper is unwrapped.
        epochs: the epochs (1-based, as the trainer counts) after which to write a snapshot; empty: none.
        prefix: the file name stem.
    """

    def __init__(self, save_dir, save_dict: Mapping, epochs=(), prefix: str = "pretrain") -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.epochs = sorted({int(e) for e in (epochs or ())})
        if any(e < 1 for e in self.epochs):
            raise ValueError(f"snapshot epochs must be >= 1, got {self.epochs}")
        self.prefix = prefix
        self.logger = logging.getLogger("volssl.snapshots")

    def path(self, epoch: int) -> Path:
        return self.save_dir / f"{self.prefix}_epoch{int(epoch)}.pt"

    def attach(self, engine: Engine) -> None:
        if not self.epochs:
            return
        engine.add_event_handler(Events.STARTED, self._check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _check(self, engine: Engine) -> None:
        late = [e for e in self.epochs if e > engine.state.max_epochs]
        if late:
            raise ValueError(
                f"snapshot epoch(s) {late} beyond the run's {engine.state.max_epochs} epochs: raise the "
                "number of epochs or drop them"
            )

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        if epoch not in self.epochs or _rank() > 0:
            return
        target = self.path(epoch)
        state = {
            name: (obj.module if hasattr(obj, "module") else obj).state_dict() for name, obj in self.save_dict.items()
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp_{target.name}")
        torch.save(state, tmp)
        os.replace(tmp, target)
        self.logger.info(f"epoch {epoch}: snapshot saved {target}")


class LearningCurveWriter:
    """Record per-epoch scalars and write ``<name>.csv`` and ``<name>.png`` (learning curves) in ``output_dir``.

    Records the mean of the trainer's scalar outputs over each epoch (``loss`` and any loss terms) and, if an
    ``evaluator`` is given (or a list of them, e.g. one per network scored), its metrics after each validation. Other
    handlers add columns to an epoch's row with :meth:`record` (e.g. :class:`volssl.engines.EmbeddingProbe`). The CSV
    is rewritten after every epoch, so an interrupted run keeps its curve; a resumed run appends to the existing CSV.
    The PNG is redrawn at most every ``png_interval_s`` seconds and at the end of the run (drawing it costs about as
    much as a few training iterations of the CPU-sized configs, so redrawing it after every short epoch slowed
    training measurably).

    Args:
        output_dir: where ``<name>.csv`` and ``<name>.png`` go.
        name: the file name stem.
        evaluator: the validation evaluator(s) whose metrics are recorded (``None``: training scalars only).
        png_interval_s: the least time between two redraws of the PNG (0: after every epoch).
    """

    def __init__(
        self,
        output_dir,
        name: str = "learning_curve",
        evaluator: Engine | Sequence[Engine] | None = None,
        png_interval_s: float = 30.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.name = name
        if evaluator is None:
            self.evaluators: list[Engine] = []
        elif isinstance(evaluator, Engine):
            self.evaluators = [evaluator]
        else:
            self.evaluators = list(evaluator)
        self.png_interval_s = float(png_interval_s)
        self.rows: list[dict] = []
        self._sums: dict[str, float] = {}
        self._count = 0
        self._last_png = -float("inf")
        self._extra: dict[float, dict[str, float]] = {}  # recorded for an epoch whose row is not written yet

    def attach(self, engine: Engine) -> None:
        csv_path = self.output_dir / f"{self.name}.csv"
        if csv_path.is_file():
            with open(csv_path) as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_done)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.write(png=True))

    def _accumulate(self, engine: Engine) -> None:
        out = engine.state.output
        out = out[0] if isinstance(out, list) and out else out
        if not isinstance(out, Mapping):
            return
        _add_scalars(self._sums, out)
        self._count += 1

    def _epoch_done(self, engine: Engine) -> None:
        row = {"epoch": float(engine.state.epoch)}
        row.update({f"train_{k}": float(v) / max(self._count, 1) for k, v in self._sums.items()})
        for evaluator in self.evaluators:
            # only the metrics of a validation run at this epoch (not stale ones from an earlier validation)
            if evaluator.state.epoch != engine.state.epoch or not evaluator.state.metrics:
                continue
            metrics = {k: v for k, v in evaluator.state.metrics.items() if _is_number(v)}
            row.update({(k if k.startswith("val_") else f"val_{k}"): float(v) for k, v in metrics.items()})
        row.update(self._extra.pop(row["epoch"], {}))
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        self._sums, self._count = {}, 0
        self.write(png=time.monotonic() - self._last_png >= self.png_interval_s)

    def record(self, epoch: int, values: Mapping[str, float]) -> None:
        """Add ``values`` (column -> number) to the row of ``epoch``, whether that row is written already (the file is
        then rewritten) or not (the values join it when the epoch ends). Epoch 0 (before training) gets a row of
        its own."""
        epoch_key = float(epoch)
        values = {str(k): float(v) for k, v in values.items()}
        for row in self.rows:
            if row.get("epoch") == epoch_key:
                row.update(values)
                self.write()
                return
        if epoch_key == 0.0:
            self.rows = [{"epoch": 0.0, **values}] + self.rows
            self.write()
            return
        self._extra.setdefault(epoch_key, {}).update(values)

    def write(self, png: bool = True) -> None:
        """Rewrite the CSV and, with ``png``, the PNG."""
        if _rank() > 0:  # under torch.distributed every rank records, rank 0 writes
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "epoch", k))
        tmp = self.output_dir / f".tmp_{self.name}.csv"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.output_dir / f"{self.name}.csv")
        if not png or not self.rows:
            return
        from ..viz import plot_learning_curves

        plot_learning_curves(self.rows, self.output_dir / f"{self.name}.png")
        self._last_png = time.monotonic()


class EpochProgress:
    """One readable line per epoch: the mean training loss (and its terms), the latest validation metric with the best
    so far, the epoch time and the time left, e.g.::

        fine-tuning epoch 12/40: loss 0.4123 | val_mean_dice 0.6310 (best 0.6502 at 10) | 6.1 s/epoch, 2m51s left

    Logged by the ``volssl.progress`` logger (the bundles' logging.conf prints it on the console); under
    ``torch.distributed`` only rank 0 logs.

    Args:
        name: what is being run (``"pretraining"``, ``"fine-tuning"``, ``"training"``).
        evaluator: the validation evaluator, when there is one.
        metric: the evaluator's key metric (default: its first metric).
    """

    def __init__(self, name: str = "training", evaluator: Engine | None = None, metric: str | None = None) -> None:
        self.name = name
        self.evaluator = evaluator
        self.metric = metric
        self.logger = logging.getLogger("volssl.progress")
        self._sums: dict[str, float] = {}
        self._count = 0
        self._start = 0.0
        self._best: tuple[float, int] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_done)

    def _epoch_started(self, engine: Engine) -> None:
        self._sums, self._count, self._start = {}, 0, time.perf_counter()

    def _accumulate(self, engine: Engine) -> None:
        out = engine.state.output
        out = out[0] if isinstance(out, list) and out else out
        if isinstance(out, Mapping):
            _add_scalars(self._sums, out)
        self._count += 1

    def _validation(self, epoch: int) -> str:
        if self.evaluator is None or self.evaluator.state.epoch != epoch or not self.evaluator.state.metrics:
            return ""
        metrics = self.evaluator.state.metrics
        name = self.metric or next(iter(metrics))
        value = float(metrics[name])
        if self._best is None or value > self._best[0]:
            self._best = (value, epoch)
        return f" | {name} {value:.4f} (best {self._best[0]:.4f} at {self._best[1]})"

    def _epoch_done(self, engine: Engine) -> None:
        if _rank() > 0:
            return
        seconds = time.perf_counter() - self._start
        epoch, total = int(engine.state.epoch), int(engine.state.max_epochs)
        losses = " ".join(f"{k} {float(v) / max(self._count, 1):.4f}" for k, v in self._sums.items()) or "no loss"
        left = _duration(seconds * (total - epoch))
        self.logger.info(
            f"{self.name} epoch {epoch}/{total}: {losses}{self._validation(epoch)} | "
            f"{seconds:.1f} s/epoch, {left} left"
        )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _progress(checkpoint) -> tuple[int, int] | None:
    """``(epochs done, epochs planned)`` of a resume checkpoint (``{"trainer": engine.state_dict(), ...}``), if any.

    ignite's ``Engine.state_dict()`` stores the iteration, the epoch length and ``max_epochs``, not the epoch.
    """
    trainer = checkpoint.get("trainer") if isinstance(checkpoint, Mapping) else None
    if not isinstance(trainer, Mapping) or trainer.get("max_epochs") is None:
        return None
    if trainer.get("epoch") is not None:
        done = int(trainer["epoch"])
    elif trainer.get("iteration") is not None and trainer.get("epoch_length"):
        done = int(trainer["iteration"]) // int(trainer["epoch_length"])
    else:
        return None
    return done, int(trainer["max_epochs"])


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
