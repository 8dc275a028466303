"""Throughput of the training loops, before and after the speed-ups, side by side in one run: the slice fine-tuning
epoch (CORAL ``train.json`` + ``cpu_small.json``), the CRLN iteration (``train.json`` + ``cpu_small.json`` +
``adam.json``) and the CORAL/PCL pretraining iteration against the public code at the same settings.

Each measurement runs in a fresh Python subprocess (``benchmark_common.spawn``) and builds the bundle's own objects
from its configs (``monai.bundle.ConfigParser``: the trainer with its handlers, the evaluator, the checkpoint savers),
so it measures what ``python -m monai.bundle run`` runs. The first epoch (or the warm-up iterations) is not timed.

**Fine-tuning epoch** (``finetune``), on the phantoms (made in a temporary folder: 20, 2 labelled, 3 validation) and,
when ``../shared/data/hippocampus`` exists, on hippocampus (10 labelled, 20 validation). The wall time of the timed
epochs is split into ``data_s`` (fetching the batches: slice copy + augmentation), ``step_s`` (the training
iterations: forward, loss, backward, optimiser step: the network's work), ``val_s`` (the validation runs) and
``other_s`` (everything else: checkpoints, learning-curve files, logging). ``non_network`` = 1 - step / wall. Variants:

- ``before``: the configs as they were (slices cached as MetaTensors and augmented with metadata tracking, the
  learning-curve PNG redrawn after every epoch, validation by MONAI's ``SliceInferer`` with the training patch as
  window, one pass over the labelled slices per epoch with a validation after each);
- ``after``: the current configs, same schedule (plain-tensor slices, the PNG redrawn at most every 30 s,
  validation by ``volssl.inferers.WholeSliceInferer`` as in ``inference.json``: whole slices padded to a multiple
  of 16, in batches);
- ``after_ipe<N>``: the current configs with ``iterations_per_epoch=N`` (validation, checkpoint and curve once per N
  iterations instead of once per pass over a few labelled slices);
- ``after_ipe<N>_workers1``: the same with one DataLoader worker process, which prepares the next batches while the
  network trains (it needs a free core: on a machine whose cores are all busy it only adds contention).

**CRLN iteration** (``crln``), on the phantoms at the main job's CRLN settings (``tools/run_main.py``): ``before`` =
the learning-curve PNG after every epoch, ``after`` = the current configs. ``data_s`` includes the unlabelled batches
fetched inside the step (and ``step_s`` excludes them).

**Pretraining iteration** (``pretrain``): our ``pretrain.json`` (CORAL, and PCL with ``pcl.json``) against the public
code's network and loss (``--public_coral`` = a checkout of github.com/haoyiwang25/CORAL, ``--public_pcl`` = a checkout
of github.com/dewenzeng/positional_cl; get one with ``git clone``; nothing of it is in this repository: the worker
imports ``network/unet2d.py`` and ``loss/contrast_loss.py`` from the path given) on the same synthetic batches: B
slices x 2 views of ``patch`` x ``patch``, base width ``features``, projection dimension 512, SGD lr 0.1 momentum 0.9,
``tau = 0.1``. Ours is the bundle's trainer with its ``iteration_update`` (handlers removed, so only the step is
timed); the public one is its training loop's step (two forwards, the loss on the stacked views, backward, SGD).
``ratio`` = our iterations/s over the public code's.

Usage::

    python tools/benchmark_training.py --threads 1 --output runs/bench_training.csv
    python tools/benchmark_training.py --what "['pretrain']" --public_coral /path/to/CORAL --public_pcl /path/to/positional_cl
    python tools/benchmark_training.py --what "['finetune']" --datasets "['phantom']"
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:
    import benchmark_common as common
except ImportError:  # imported from elsewhere rather than run as `python tools/benchmark_*.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchmark_common as common

REPO_ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = REPO_ROOT.parent / "shared" / "data" / "hippocampus"
COLUMNS = ["measure", "data", "variant", "threads", "other_load", "iterations", "wall_s", "its_per_s", "data_s",
           "step_s", "val_s", "other_s", "non_network", "speedup"]
FLOAT_FORMATS = {"its_per_s": ".3f", "non_network": ".2f", "speedup": ".2f", "other_load": ".2f"}
def _crln_phantom() -> dict:
    """The main job's CRLN phantom settings (``tools/run_main.py``), a CPU-sized semi-supervised run."""
    from run_main import CRLN_PHANTOM

    return dict(CRLN_PHANTOM)


# --- data ---------------------------------------------------------------------------------------------------------


def _datalist(name: str, root: Path) -> Path:
    from volssl.data.converters import msd_to_datalist

    if name == "phantom":
        from volssl.data.phantom import write_phantom_dataset

        write_phantom_dataset(root / "phantom", n=20, seed=0)
        path = root / "phantom" / "datalist.json"
        msd_to_datalist(root / "phantom", path, n_labeled=2, n_val=3, n_test=5, seed=0)
        return path
    if name == "hippocampus":
        path = root / "hippocampus.json"
        msd_to_datalist(HIPPOCAMPUS, path, n_labeled=10, n_val=20, n_test=40, seed=0)
        return path
    raise ValueError(f"unknown data set {name!r}")


# --- instrumented training runs -------------------------------------------------------------------------------------


def _curve_writer_path(handlers: list, prefix: str) -> str | None:
    for i, h in enumerate(handlers):
        if isinstance(h, dict) and h.get("_target_", "").endswith("LearningCurveWriter"):
            return f"{prefix}#{i}#png_interval_s"
    return None


class _Timer:
    """Wall time between two events of an engine, summed."""

    def __init__(self, engine, start, end) -> None:
        self.total, self._t0 = 0.0, 0.0
        engine.add_event_handler(start, self._start)
        engine.add_event_handler(end, self._stop)

    def _start(self, _=None) -> None:
        self._t0 = time.perf_counter()

    def _stop(self, _=None) -> None:
        self.total += time.perf_counter() - self._t0


def _timed_getitem(dataset) -> list[float]:
    """Make ``dataset[i]`` add its duration to the returned one-element list (a subclass swapped onto the object)."""
    spent = [0.0]
    base = type(dataset)

    def getitem(self, index):
        t0 = time.perf_counter()
        try:
            return base.__getitem__(self, index)
        finally:
            spent[0] += time.perf_counter() - t0

    dataset.__class__ = type(f"Timed{base.__name__}", (base,), {"__getitem__": getitem})
    return spent


def _measure_training(configs: list[str], datalist: str, overrides: dict, timed_iterations: int,
                      unlabeled: bool) -> dict:
    """Run the bundle trainer for one untimed epoch and then as many epochs as make at least ``timed_iterations``
    iterations, timed."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    root = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        parser = ConfigParser()
        parser.read_config(configs)
        parser.update({"bundle_root": str(root), "dataset_dir": str(Path(datalist).parent), "datalist": datalist,
                       **overrides})
        per_epoch = len(parser.get_parsed_content("train#dataloader"))
        parser["epochs"] = 1 + -(-timed_iterations // per_epoch)
        parser.get_parsed_content("setup")
        trainer = parser.get_parsed_content("train#trainer")
        if "train#checkpointing" in parser:  # slice bundles
            for handler in parser.get_parsed_content("train#checkpointing"):
                handler.attach(trainer)
        else:  # CRLN: an ignite Checkpoint added in "run"
            trainer.add_event_handler(Events.EPOCH_COMPLETED, parser.get_parsed_content("train#checkpoint_saver"))
        evaluator = parser.get_parsed_content("validate#evaluator")
        data = _Timer(trainer, Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED)
        step = _Timer(trainer, Events.ITERATION_STARTED, Events.ITERATION_COMPLETED)
        val = _Timer(evaluator, Events.STARTED, Events.COMPLETED)
        inner = _timed_getitem(parser.get_parsed_content("unlabeled#dataset")) if unlabeled else [0.0]
        marks = []

        def mark(engine):
            marks.append((time.perf_counter(), data.total, step.total, val.total, inner[0], engine.state.iteration))

        trainer.add_event_handler(Events.EPOCH_STARTED(once=2), mark)
        trainer.add_event_handler(Events.COMPLETED, mark)
        trainer.run()
        (t0, d0, s0, v0, u0, i0), (t1, d1, s1, v1, u1, i1) = marks
        wall, unl = t1 - t0, u1 - u0
        data_s, step_s, val_s = d1 - d0 + unl, s1 - s0 - unl, v1 - v0
        return {"iterations": i1 - i0, "wall_s": wall, "its_per_s": (i1 - i0) / wall, "data_s": data_s,
                "step_s": step_s, "val_s": val_s, "other_s": wall - data_s - step_s - val_s,
                "non_network": 1 - step_s / wall}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _finetune_variant(variant: str) -> dict:
    """Config values of a fine-tuning variant."""
    from monai.bundle import ConfigParser

    configs = REPO_ROOT / "bundles" / "coral_mri_segmentation" / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    png = _curve_writer_path(parser["train#handlers"], "train#handlers")
    if variant == "before":
        sliding = {"_target_": "SliceInferer", "spatial_dim": "@slice_axis", "roi_size": "@patch_size",
                   "sw_batch_size": "@sw_batch_size", "overlap": 0.25, "mode": "gaussian"}
        return {"train#dataset#track_meta": True, png: 0, "validate#inferer": sliding}
    if variant == "after":
        return {}
    if variant.startswith("after_ipe"):
        ipe, _, workers = variant.removeprefix("after_ipe").partition("_workers")
        return {"iterations_per_epoch": int(ipe), **({"num_workers": int(workers)} if workers else {})}
    raise ValueError(f"unknown fine-tuning variant {variant!r}")


# --- pretraining: ours and the public code --------------------------------------------------------------------------


def _synthetic_batches(n: int, batch: int, patch: int, seed: int = 0) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(batch, 1, patch, patch, generator=g),
             "image_2": torch.randn(batch, 1, patch, patch, generator=g),
             "position": torch.rand(batch, generator=g)} for _ in range(n)]


def _pretrain_ours(method: str, features: int, patch: int, batch: int, iterations: int, warmup: int) -> dict:
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    configs = REPO_ROOT / "bundles" / "coral_mri_segmentation" / "configs"
    files = [str(configs / "pretrain.json")] + ([str(configs / "pcl.json")] if method == "pcl" else [])
    parser = ConfigParser()
    parser.read_config(files)
    batches = _synthetic_batches(warmup + iterations, batch, patch)
    parser.update({"features": features, "patch_size": [patch, patch], "pretrain_batch_size": batch,
                   "pretrain#dataloader": batches, "pretrain#handlers": [], "pretrain_epochs": 1, "amp": False})
    parser.get_parsed_content("setup")
    trainer = parser.get_parsed_content("pretrain#trainer")
    times, t0 = [], [0.0]
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: t0.__setitem__(0, time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: times.append(time.perf_counter() - t0[0]))
    trainer.run()
    return _iteration_row(times[warmup:])


def _pretrain_public(method: str, checkout: str, features: int, patch: int, batch: int, iterations: int,
                     warmup: int) -> dict:
    import importlib

    import torch

    sys.path.insert(0, str(Path(checkout).resolve()))
    unet = importlib.import_module("network.unet2d")
    losses = importlib.import_module("loss.contrast_loss")
    torch.manual_seed(0)
    model = unet.UNet2D_classification(in_channels=1, initial_filter_size=features, kernel_size=3, classes=512,
                                       do_instancenorm=True)
    if method == "coral":
        criterion = losses.CORALLoss(feature_dim=512, temperature=0.1, alpha=1.0, contrast_mode="all",
                                     apply_soft_weights=True, sigmoid_scale=1.0)
    else:
        criterion = losses.SupConLoss(threshold=0.35, temperature=0.1, contrastive_method="pcl")
    optimizer = torch.optim.SGD(list(model.parameters()) + list(criterion.parameters()), lr=0.1, momentum=0.9,
                                weight_decay=1e-5)
    model.train()
    times = []
    for b in _synthetic_batches(warmup + iterations, batch, patch):
        t0 = time.perf_counter()
        f1, f2 = model(b["image"]), model(b["image_2"])
        out = criterion(torch.cat([f1.unsqueeze(1), f2.unsqueeze(1)], dim=1), labels=b["position"])
        loss = out["loss"] if isinstance(out, dict) else out
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return _iteration_row(times[warmup:])


def _iteration_row(times: list[float]) -> dict:
    wall = sum(times)
    return {"iterations": len(times), "wall_s": wall, "its_per_s": len(times) / wall, "step_s": wall,
            "non_network": 0.0}


# --- the worker and the driver --------------------------------------------------------------------------------------


def _measure_one(measure: str, data: str, variant: str, threads: int | None, datalist: str | None = None,
                 checkout: str | None = None, features: int = 16, patch: int = 64, batch: int = 32,
                 iterations: int = 10, warmup: int = 2, timed: int = 100) -> dict:
    """Runs in the worker subprocess; returns one result row."""
    import logging

    import torch

    logging.disable(logging.INFO)  # the bundles' StatsHandler/ProgressBar lines would flood the worker's output
    if threads:
        torch.set_num_threads(int(threads))
    busy0, own0, wall0 = common.cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    row = {"measure": measure, "data": data, "variant": variant, "threads": torch.get_num_threads()}
    if measure == "finetune":
        configs = REPO_ROOT / "bundles" / "coral_mri_segmentation" / "configs"
        overrides = _finetune_variant(variant)
        extra = {"num_classes": 3} if data == "hippocampus" else {}
        row.update(_measure_training([str(configs / "train.json"), str(configs / "cpu_small.json")], datalist,
                                     {"load_pretrain": False, **extra, **overrides}, timed, unlabeled=False))
    elif measure == "crln":
        configs = REPO_ROOT / "bundles" / "crln_mri_segmentation" / "configs"
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(configs / "train.json"))
        png = _curve_writer_path(parser["train#handlers"], "train#handlers")
        overrides = {png: 0} if variant == "before" else {}
        row.update(_measure_training([str(configs / n) for n in ("train.json", "cpu_small.json", "adam.json")],
                                     datalist, {**_crln_phantom(), **overrides}, timed, unlabeled=True))
    elif measure.startswith("pretrain_"):
        method = measure.removeprefix("pretrain_")
        if variant == "ours":
            row.update(_pretrain_ours(method, features, patch, batch, iterations, warmup))
        else:
            row.update(_pretrain_public(method, checkout, features, patch, batch, iterations, warmup))
        row["data"] = f"synthetic f{features} {patch}x{patch} B{batch}x2"
    else:
        raise ValueError(f"unknown measurement {measure!r}")
    busy1, own1, wall1 = common.cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    if busy0 is not None:
        row["other_load"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    return row


def benchmark(
    what=("finetune", "crln", "pretrain"),
    datasets=None,
    ipe: int = 100,
    timed: int = 100,
    public_coral: str | None = None,
    public_pcl: str | None = None,
    features: int = 16,
    patch: int = 64,
    batch: int = 32,
    iterations: int = 10,
    rounds: int = 3,
    threads: int | None = 1,
    output: str | None = None,
) -> list[dict]:
    """Measure the training loops before and after the speed-ups (see the module docstring).

    Args:
        what: the measurements: ``finetune``, ``crln``, ``pretrain``.
        datasets: the fine-tuning data sets (default ``['phantom', 'hippocampus']``, the latter when present).
        ipe: ``iterations_per_epoch`` of the ``after_ipe`` fine-tuning variants.
        timed: timed training iterations per fine-tuning and CRLN measurement (whole epochs, after an untimed one).
        public_coral: a checkout of github.com/haoyiwang25/CORAL (pretraining comparison; skipped when absent).
        public_pcl: a checkout of github.com/dewenzeng/positional_cl (PCL comparison; skipped when absent).
        features, patch, batch: pretraining settings (base width, square patch side, slices per batch).
        iterations: timed pretraining iterations per measurement (after 2 untimed ones).
        rounds: pretraining: measurements of each side, alternating public / ours; the median is reported.
        threads: ``torch.set_num_threads`` in the workers (``None``: torch's default).
        output: write the table here, JSON if the name ends in ``.json``, CSV otherwise.

    Returns:
        The rows of the table.
    """
    what = [what] if isinstance(what, str) else list(what)
    if datasets is None:
        datasets = ["phantom"] + (["hippocampus"] if HIPPOCAMPUS.is_dir() else [])
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_training_data_"))
    try:
        if "finetune" in what:
            for name in datasets:
                datalist = str(_datalist(name, tmp))
                variants = ["before", "after", f"after_ipe{ipe}", f"after_ipe{ipe}_workers1"]
                found = [common.spawn(__file__, measure="finetune", data=name, variant=v, threads=threads,
                                      datalist=datalist, timed=timed) for v in variants]
                rows += _with_speedup(found)
        if "crln" in what:
            datalist = str(_datalist("phantom", tmp))
            found = [common.spawn(__file__, measure="crln", data="phantom", variant=v, threads=threads,
                                  datalist=datalist, timed=timed) for v in ("before", "after")]
            rows += _with_speedup(found)
        if "pretrain" in what:
            for method, checkout in (("coral", public_coral), ("pcl", public_pcl)):
                kw = {"measure": f"pretrain_{method}", "data": "synthetic", "threads": threads, "features": features,
                      "patch": patch, "batch": batch, "iterations": iterations}
                if not checkout:
                    print(f"pretrain_{method}: no public checkout given (--public_{method}): ours only")
                    rows.append(common.spawn(__file__, variant="ours", **kw))
                    continue
                if not (Path(checkout) / "loss" / "contrast_loss.py").is_file():
                    raise SystemExit(f"{checkout} is not a checkout of the public code (no loss/contrast_loss.py); "
                                     "get it with: git clone https://github.com/"
                                     + ("haoyiwang25/CORAL" if method == "coral" else "dewenzeng/positional_cl"))
                # alternate the two, ``rounds`` times each, so that a change of load on the machine hits both
                found = {"public": [], "ours": []}
                for _ in range(max(1, int(rounds))):
                    found["public"].append(common.spawn(__file__, variant="public", checkout=str(checkout), **kw))
                    found["ours"].append(common.spawn(__file__, variant="ours", **kw))
                public, ours = (_median_row(found[v]) for v in ("public", "ours"))
                public["speedup"], ours["speedup"] = 1.0, ours["its_per_s"] / public["its_per_s"]
                rows += [public, ours]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.print_table(rows, COLUMNS, FLOAT_FORMATS)
    print("speedup: iterations/s over the first row of the same measurement and data (pretraining: ours over the "
          "public code's); non_network = 1 - step_s / wall_s; other_load: cores other processes kept busy")
    common.write_table(rows, COLUMNS, output)
    return rows


def _median_row(found: list[dict]) -> dict:
    """The row of the median iterations/s among repeated measurements (``rounds`` noted in ``variant``)."""
    ranked = sorted(found, key=lambda r: r["its_per_s"])
    row = dict(ranked[(len(ranked) - 1) // 2])
    if len(found) > 1:
        row["variant"] = f"{row['variant']} (median of {len(found)})"
    return row


def _with_speedup(found: list[dict]) -> list[dict]:
    for row in found:
        row["speedup"] = row["its_per_s"] / found[0]["its_per_s"]
    return found


if __name__ == "__main__":
    common.main(_measure_one, benchmark)
