"""Helpers shared by the ``tools/compare_*.py`` scripts: run one bundle step as a user would, and summarise the runs.

Each comparison lays its runs out as ``<output_dir>/<arm>/seed<k>/`` (one bundle root per arm and seed) with
``train.log`` and ``eval/metrics_summary.json`` (written by ``volssl.metrics.evaluate_and_report``). :func:`summarize`
turns those into ``results.csv`` (one row per run), ``results.md`` (mean +- sample std over seeds per arm) and
``results.png`` (foreground-mean test Dice per arm).

The scripts run as ``python tools/compare_*.py`` so ``tools/`` is ``sys.path[0]`` and ``import comparison_common``
works; they add their folder to ``sys.path`` when imported from elsewhere.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    from bundle_cli import bundle_command
except ImportError:  # imported from elsewhere (the tests put tools/ on sys.path; this covers other importers)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bundle_cli import bundle_command

REPO_ROOT = Path(__file__).resolve().parents[1]

# foreground-mean metrics reported for every run: (column, key in metrics_summary.json's "mean_foreground")
MEAN_FG_METRICS = (("dice_mean_fg", "dice"), ("jaccard_mean_fg", "jaccard"), ("hd95_mm_mean_fg", "hd95_mm"),
                   ("asd_mm_mean_fg", "asd_mm"), ("hd95_vox_mean_fg", "hd95_vox"), ("asd_vox_mean_fg", "asd_vox"))
# the pooled-over-slices 2D Dice of the slice-method papers (positional_cl's protocol), averaged over foreground classes
POOLED_COLUMN = "pooled_dice_2d_mean_fg"


def parse_literal(value, default):
    """A command-line value as a Python literal (``fire`` hands over strings for some quoting styles)."""
    if value is None:
        return default
    return ast.literal_eval(value) if isinstance(value, str) else value


def overlay_files(configs_dir: Path, overlay) -> list[Path]:
    """The overlay config files to merge after a bundle's main config, in order.

    ``overlay``: ``None``/``""`` (none), a file name in ``configs_dir``, several joined by commas
    (``"cpu_small.json,adam.json"``) or a list of names. A name that is not a file there is an error naming it.
    """
    if not overlay:
        return []
    names = [n.strip() for n in overlay.split(",")] if isinstance(overlay, str) else [str(n) for n in overlay]
    paths = [Path(configs_dir) / n for n in names if n]
    missing = [str(q) for q in paths if not q.is_file()]
    if missing:
        raise SystemExit(f"overlay config not found: {', '.join(missing)}")
    return paths


def bundle_run(configs: list[Path], bundle_root: Path, dataset_dir: Path, overrides: dict, log: Path) -> float:
    """One ``python -m monai.bundle run``; its output goes to ``log`` (the last lines are shown on failure).

    Returns the wall-clock seconds the step took.
    """
    cmd = [sys.executable, *bundle_command(configs, bundle_root, dataset_dir, overrides)]
    log.parent.mkdir(parents=True, exist_ok=True)
    print("  $ " + " ".join(cmd[1:]), flush=True)
    start = time.time()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"step failed (exit {proc.returncode}), log {log}:\n{tail}")
    seconds = time.time() - start
    print(f"    done in {seconds:.0f} s (log {log})", flush=True)
    return seconds


def record_seconds(run_root: Path, step: str, seconds: float) -> None:
    """Add one step's wall-clock time to ``<run_root>/timing.json`` (reported as ``<step>_s`` in the results)."""
    path = run_root / "timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {}
    timing[step] = round(seconds, 1)
    path.write_text(json.dumps(timing, indent=2))


def summarize(
    output_dir: str, arm_order: list[str] | None = None, eval_dir: str = "eval", name: str = "results"
) -> None:
    """Collect ``<arm>/seed<k>/<eval_dir>/metrics_summary.json`` into ``<name>.csv``, ``<name>.md`` and ``<name>.png``.

    Columns: foreground-mean Dice, Jaccard, HD95 and ASD (in mm from the NIfTI spacing, and in voxels as the
    semi-supervised papers report them), the pooled-over-slices 2D Dice (foreground mean; empty for summaries written
    before it was recorded), per-class Dice when there is more than one foreground class, ``best_val_dice``
    (validation Dice of the selected checkpoint, from ``train.log``) and ``train_s`` (training wall-clock seconds,
    when recorded).
    """
    out = Path(output_dir)
    rows = []
    for summary_path in sorted(out.glob(f"*/seed*/{eval_dir}/metrics_summary.json")):
        summary = json.loads(summary_path.read_text())
        run_root = summary_path.parents[1]
        arm, seed = run_root.parent.name, int(run_root.name.removeprefix("seed"))
        row = {"arm": arm, "seed": seed, "n_test": summary["n_cases"]}
        for column, key in MEAN_FG_METRICS:
            row[column] = summary["mean_foreground"][key]["mean"]
        pooled = summary["mean_foreground"].get("pooled_slice_dice")  # one number per run (absent in old summaries)
        row[POOLED_COLUMN] = pooled["mean"] if isinstance(pooled, dict) else pooled
        if len(summary["classes"]) > 1:
            for stats in summary["classes"].values():
                row[f"dice_{stats['name']}"] = stats["dice"]["mean"]
        row["best_val_dice"] = _best_val(run_root / "train.log")
        timing = run_root / "timing.json"
        if timing.is_file():
            row["train_s"] = json.loads(timing.read_text()).get("train")
        rows.append(row)
    if not rows:
        raise SystemExit(f"no finished run under {out} (no */seed*/{eval_dir}/metrics_summary.json)")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    metrics = [c for c in columns if c not in ("arm", "seed", "n_test")]
    found = list(dict.fromkeys(r["arm"] for r in rows))
    arms = [a for a in (arm_order or []) if a in found] + [a for a in found if a not in (arm_order or [])]
    lines = ["| arm | seeds | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    table = {}
    for arm in arms:
        sub = [r for r in rows if r["arm"] == arm]
        cells = []
        for m in metrics:
            values = [r[m] for r in sub if r.get(m) is not None]
            if not values:
                table[(arm, m)] = (float("nan"), 0.0)
                cells.append("-")
                continue
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            table[(arm, m)] = (mean, std)
            cells.append(f"{mean:.0f} +- {std:.0f}" if m == "train_s" else f"{mean:.4f} +- {std:.4f}")
        lines.append(f"| {arm} | {','.join(str(r['seed']) for r in sub)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    (out / f"{name}.md").write_text(
        text + "\n\nPer-volume 3D metrics on the test role (Dice, Jaccard; HD95 and ASD in mm from the image spacing, "
        "and in voxels), averaged over the test volumes and the foreground classes, then mean +- sample std over seeds; "
        "pooled_dice_2d_mean_fg: Dice pooled over all 2D slices of the test role (the slice-method papers' protocol), "
        "averaged over the foreground classes ('-': not recorded by that run); "
        "best_val_dice: the validation Dice of the selected checkpoint; train_s: training wall-clock seconds.\n")
    print(text)
    _plot(table, arms, out / f"{name}.png")


def _best_val(log: Path) -> float | None:
    if not log.is_file():
        return None
    best = None
    for line in log.read_text().splitlines():
        # the shipped network's saver only ("best val_mean_dice 0.81, saved ..."), not the CRLN student's
        # ("best val_mean_dice_student ...")
        found = re.search(r"best val_mean_dice ([0-9.eE+-]+),", line)
        if found:
            best = float(found.group(1))
    return best


def _plot(table: dict, arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(arms), 3.2))
    means = [table[(a, "dice_mean_fg")][0] for a in arms]
    stds = [table[(a, "dice_mean_fg")][1] for a in arms]
    ax.bar(arms, means, yerr=stds, capsize=4, color="tab:blue")
    ax.set_ylabel("test Dice (foreground mean)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
