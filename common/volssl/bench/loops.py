"""The bundles' training loops, built from their own configs and timed against the hardware.

One measurement builds a bundle's trainer with ``monai.bundle.ConfigParser`` from its configs (what ``python -m
monai.bundle run`` builds; the handlers left out so that only the loop is timed) and reports, for one variant of the
data path and precision:

- ``setup_s``: building the trainer (config parsing, caching the volumes: the data part of a run's start-up);
- ``its_per_s``: training iterations per second of the loop (data and step), from the median time between
  successive iterations after warm-up;
- ``network_its_per_s``: the network-only bound: the same iteration step called on one batch already on the device,
  so no data path at all (median time per call); ``overhead`` = loop time / network-only time - 1, the data path's
  cost relative to it. Medians, because on a shared machine other processes' bursts hit single iterations;
- ``gflop_per_it``: FLOPs of one step (forward and backward of every network call in it, the teacher's too), by
  ``torch.utils.flop_counter``; ``tflops`` = that times ``its_per_s``; ``fraction_of_peak`` against
  :func:`volssl.bench.peak.device_peak`;
- ``items_per_s``: slices (2D loops: views or pair members counted once each) or voxels (CRLN) per second;
- ``eval_s``: one run of the validation evaluator, where the loop has one.
"""

from __future__ import annotations

import itertools
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["LOOPS", "VARIANTS", "SCALES", "loop_configs", "measure_loop"]

#: The training loops: CORAL pretraining (two views), SAL pretraining (slice pairs), slice fine-tuning, CRLN.
LOOPS = ("coral_pretrain", "sal_pretrain", "finetune", "crln")

#: ``old``: per-sample MONAI transforms in a DataLoader, fp32; ``new``: the batched on-device path with mixed precision
#: and channels_last (the bundles' defaults); ``new_fp32``: the new data path alone.
VARIANTS = {
    "old": {"data_path": "loader", "mixed_precision": False, "channels_last": False},
    "new_fp32": {"data_path": "device", "mixed_precision": False, "channels_last": False},
    "new": {"data_path": "device", "mixed_precision": True, "channels_last": True},
}

# the CPU recipe of each loop (the bundles' cpu_small.json overlays; CRLN at the main job's phantom settings) and
# the papers' sizes, for a GPU
SCALES = {
    "cpu": {
        "coral_pretrain": {},
        "sal_pretrain": {},
        "finetune": {"iterations_per_epoch": 20},
        "crln": {
            "num_classes": 4,
            "n_filters": 8,
            "patch_size": [48, 48, 16],
            "iterations_per_epoch": 10,
            "rectify_after_iterations": 0,
            "dropout": 0.0,
        },
    },
    "paper": {
        "coral_pretrain": {"features": 48, "patch_size": [352, 352], "pretrain_batch_size": 32},
        "sal_pretrain": {"features": 48, "patch_size": [352, 352], "pretrain_batch_size": 32},
        "finetune": {"features": 48, "patch_size": [352, 352], "batch_size": 10, "iterations_per_epoch": 20},
        "crln": {
            "num_classes": 4,
            "n_filters": 16,
            "patch_size": [112, 112, 80],
            "iterations_per_epoch": 10,
            "rectify_after_iterations": 0,
        },
    },
}

_BUNDLES = {
    "coral_pretrain": "coral_mri_segmentation",
    "sal_pretrain": "sal_mri_segmentation",
    "finetune": "coral_mri_segmentation",
    "crln": "crln_mri_segmentation",
}


def loop_configs(loop: str, bundles_dir: Path) -> list[str]:
    """The config files of ``loop``: the bundle's config and its CPU-sized overlays."""
    configs = Path(bundles_dir) / _BUNDLES[loop] / "configs"
    names = {
        "coral_pretrain": ["pretrain.json", "cpu_small.json"],
        "sal_pretrain": ["pretrain.json", "cpu_small.json"],
        "finetune": ["train.json", "cpu_small.json"],
        "crln": ["train.json", "cpu_small.json", "adam.json"],
    }[loop]
    return [str(configs / n) for n in names]


def _items_per_iteration(loop: str, parser) -> tuple[float, str]:
    if loop in ("coral_pretrain", "sal_pretrain"):
        return 2.0 * parser.get_parsed_content("pretrain_batch_size"), "slices"
    if loop == "finetune":
        return float(parser.get_parsed_content("batch_size")), "slices"
    patch = math.prod(parser.get_parsed_content("patch_size"))
    batch = parser.get_parsed_content("batch_size")
    if parser.get_parsed_content("mode") != "supervised":
        batch += parser.get_parsed_content("unlabeled_batch_size")
    return float(batch * patch), "voxels"


def _on_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: _on_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "as_tensor"):
        batch = batch.as_tensor()
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_loop(
    loop: str,
    variant: str,
    datalist: str,
    bundles_dir: str,
    scale: str = "cpu",
    warmup: int = 3,
    timed: int = 20,
    network_repeats: int = 20,
    overrides: dict | None = None,
) -> dict:
    """One measurement (see the module docstring) of ``loop`` with ``variant`` on ``datalist``."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    section = "pretrain" if loop.endswith("_pretrain") else "train"
    root = Path(tempfile.mkdtemp(prefix=f"bench_{loop}_"))
    try:
        t0 = time.perf_counter()
        parser = ConfigParser()
        parser.read_config(loop_configs(loop, Path(bundles_dir)))
        values = {
            "bundle_root": str(root),
            "dataset_dir": str(Path(datalist).parent),
            "datalist": str(datalist),
            "resume": False,
            **SCALES[scale][loop],
            **VARIANTS[variant],
            **(overrides or {}),
        }
        if loop == "finetune":
            values["load_pretrain"] = False
        if loop.endswith("_pretrain"):
            values["probe_interval"] = 0
        parser.update(values)
        if loop == "crln":
            parser["train#trainer#train_handlers"] = []
        elif section == "train":
            parser["train#trainer#train_handlers"] = []
        else:
            parser["pretrain#handlers"] = []
        parser.get_parsed_content("setup")
        trainer = parser.get_parsed_content(f"{section}#trainer")
        loader = trainer.data_loader
        device = torch.device(trainer.state.device)
        if loop == "crln":
            parser.get_parsed_content("unlabeled#dataloader")
        setup_s = time.perf_counter() - t0

        per_epoch = len(loader)
        trainer.state.max_epochs = max(1, math.ceil((warmup + timed) / per_epoch))
        stamps: list[float] = []
        stamp = trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: (_sync(device), stamps.append(time.perf_counter()))
        )
        trainer.run()
        stamp.remove()
        # medians of the per-iteration times: robust to other processes' bursts on a shared machine
        loop_s = statistics.median(b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:]))

        # the network-only bound: the same step on one batch already on the device
        step = trainer._process_function
        batch = _on_device(next(iter(loader)), device)
        if loop == "crln":
            crln_step = parser.get_parsed_content("train#step")
            if crln_step.mode != "supervised":
                unlabeled = _on_device(next(iter(parser.get_parsed_content("unlabeled#dataloader"))), device)
                crln_step._unlabeled_iter = itertools.repeat(unlabeled)

        def network_step() -> None:
            # the iteration as Ignite runs it (the batch in the state, then the iteration's handlers: the train
            # metric), without fetching a batch
            trainer.state.batch = dict(batch)
            trainer.state.output = step(trainer, trainer.state.batch)
            trainer._fire_event(Events.ITERATION_COMPLETED)

        for _ in range(2):
            network_step()
        _sync(device)
        calls = []
        for _ in range(network_repeats):
            t1 = time.perf_counter()
            network_step()
            _sync(device)
            calls.append(time.perf_counter() - t1)
        network_s = statistics.median(calls)
        from .peak import count_flops

        flops = count_flops(network_step)

        eval_s = None
        if section == "train":
            evaluator = parser.get_parsed_content("validate#evaluator")
            evaluator.run()  # warm
            t2 = time.perf_counter()
            evaluator.run()
            _sync(device)
            eval_s = time.perf_counter() - t2
        items, unit = _items_per_iteration(loop, parser)
        its = 1.0 / loop_s
        return {
            "loop": loop,
            "variant": variant,
            "scale": scale,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "setup_s": setup_s,
            "its_per_s": its,
            "items_per_s": items * its,
            "unit": unit,
            "network_its_per_s": 1.0 / network_s,
            "overhead": loop_s / network_s - 1.0,
            "gflop_per_it": flops / 1e9,
            "tflops": flops * its / 1e12,
            "eval_s": eval_s,
            "precision": getattr(getattr(step, "precision", None), "describe", lambda: "fp32")(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
