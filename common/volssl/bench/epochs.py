"""Epoch times of the bundles' own commands, this checkout against another one (e.g. an older commit), side by side.

Each measurement is one ``python -m monai.bundle run`` of a bundle config (``pretrain.json`` or ``train.json`` with
``cpu_small.json``) on the phantoms, in a fresh process, with the checkout's own ``common/`` first on ``PYTHONPATH``.
The checkouts alternate run by run (``repeats`` times each), so a slow spell of a shared machine hits both. The
figure per epoch is Ignite's "Epoch[n] Complete. Time taken": the epoch's iterations (data, forward, backward,
optimiser) and its handlers (validation, checkpoints, the embedding probe, curves), as a user waits for it.

The first epoch (warm-up, caching) is left out of the medians. ``ratio`` = this checkout's median over the other's.

Usage (``git worktree add ../base b332a94`` makes the other checkout)::

    python -m volssl.bench.epochs --other_root ../base --threads 1
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["JOBS", "parse_epoch_times", "run_epochs", "compare_epochs"]

#: what is timed: (bundle, config files, the epoch-count key, extra overrides)
JOBS = {
    "coral_pretrain": ("coral_mri_segmentation", ["pretrain.json", "cpu_small.json"], "pretrain_epochs", {}),
    "sal_pretrain": ("sal_mri_segmentation", ["pretrain.json", "cpu_small.json"], "pretrain_epochs", {}),
    "finetune": ("coral_mri_segmentation", ["train.json", "cpu_small.json"], "epochs", {"load_pretrain": False}),
}

_COMPLETE = re.compile(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")


def parse_epoch_times(log: str) -> list[dict]:
    """Per completed epoch of an Ignite log: ``epoch`` and ``epoch_s``."""
    rows = []
    for line in log.splitlines():
        m = _COMPLETE.search(line)
        if not m:
            continue
        h, mi, s = int(m.group(2)), int(m.group(3)), float(m.group(4))
        rows.append({"epoch": int(m.group(1)), "epoch_s": h * 3600 + mi * 60 + s})
    return rows


def run_epochs(
    code_root: str | Path, job: str, datalist: str | Path, epochs: int, threads: int | None, workdir: Path
) -> list[dict]:
    """One bundle run of ``job`` with the checkout at ``code_root``; its epochs' times."""
    bundle, configs, epoch_key, extra = JOBS[job]
    root = Path(code_root).resolve()
    cfg = root / "bundles" / bundle / "configs"
    env = {**os.environ, "PYTHONPATH": str(root / "common")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str([str(cfg / c) for c in configs]),
        "--bundle_root",
        str(workdir),
        "--dataset_dir",
        str(Path(datalist).parent),
        "--datalist",
        str(datalist),
        "--logging_file",
        str(cfg / "logging.conf"),
        f"--{epoch_key}",
        str(epochs),
    ]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env, check=False)
    rows = parse_epoch_times(done.stdout + done.stderr)
    if done.returncode != 0 or len(rows) < epochs:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{job} with {root} failed (exit {done.returncode}, {len(rows)} epochs logged):\n{tail}")
    return rows


def _median(rows: list[dict]) -> float:
    return statistics.median(r["epoch_s"] for r in rows if r["epoch"] > 1)


def compare_epochs(
    other_root: str,
    jobs: list[str] | tuple[str, ...] = ("coral_pretrain", "finetune"),
    this_root: str | None = None,
    datalist: str | None = None,
    epochs: int = 4,
    repeats: int = 2,
    threads: int | None = 1,
) -> list[dict]:
    """Median epoch times of each job, this checkout against ``other_root``; prints a Markdown table.

    Args:
        other_root: the other checkout (a ``git worktree`` of the baseline commit).
        jobs: which of :data:`JOBS`.
        this_root: this checkout (default: the repository holding this module).
        datalist: the data (default: 20 phantoms in a temporary folder, 2 labelled, 3 validation).
        epochs: epochs per run (the first is not counted).
        repeats: runs per checkout and job, alternating.
        threads: ``OMP_NUM_THREADS`` of every run.
    """
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        raise ValueError(f"unknown jobs {unknown}: {sorted(JOBS)}")
    this = Path(this_root) if this_root else Path(__file__).resolve().parents[3]
    out = []
    with tempfile.TemporaryDirectory(prefix="bench_epochs_") as tmp:
        if datalist is None:
            from .throughput import _phantom_datalist

            datalist = str(_phantom_datalist(Path(tmp)))
        for job in jobs:
            times: dict[str, list[dict]] = {"this": [], "other": []}
            for r in range(repeats):
                for name, root in (("other", other_root), ("this", this)):
                    rows = run_epochs(root, job, datalist, epochs, threads, Path(tmp) / f"{job}_{name}_{r}")
                    times[name] += rows
            row = {"job": job, "threads": threads, "epochs_counted": len([r for r in times["this"] if r["epoch"] > 1])}
            for name in ("other", "this"):
                row[f"{name}_epoch_s"] = _median(times[name])
            row["ratio"] = row["this_epoch_s"] / row["other_epoch_s"]
            out.append(row)
            print(
                f"{job}: epoch {row['other_epoch_s']:.2f} -> {row['this_epoch_s']:.2f} s (x{row['ratio']:.3f})",
                flush=True,
            )
    print("\n| job | epochs timed | epoch s (other) | epoch s (this) | this / other |\n|---|---|---|---|---|")
    for r in out:
        print(
            f"| {r['job']} | {r['epochs_counted']} | {r['other_epoch_s']:.2f} | {r['this_epoch_s']:.2f} | "
            f"{r['ratio']:.3f} |"
        )
    return out


def main() -> None:
    import fire

    fire.Fire(compare_epochs, serialize=lambda rows: None)


if __name__ == "__main__":
    main()
