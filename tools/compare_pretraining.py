"""Few-label protocol: pretrain once per method, fine-tune from each pretrained encoder and from random init with the
same labelled volumes, settings and seeds, then report test Dice as mean +- std over seeds.

    python tools/compare_pretraining.py run --datalist runs/hippocampus/datalist.json --output_dir runs/hippo_cmp \\
        --methods "{'coral': 'bundles/coral_mri_segmentation'}" --overrides "{'num_classes': 3}" --seeds "[0,1,2]"

Every step is a ``python -m monai.bundle run`` of the bundle configs (the same commands a user types), each in its own
bundle root under ``output_dir``:

- ``<method>/pretrain``: ``pretrain.json`` (+ ``overlay``) once per method, with the first seed;
- ``<arm>/seed<k>``: ``train.json`` of ``finetune_bundle`` with ``load_pretrain`` and ``pretrained_ckpt`` pointing at
  the method's ``pretrain.pt`` (arm ``random``: ``load_pretrain=false``), then ``inference.json`` + ``evaluate.json`` on
  the test role. The checkpoint is the best by validation Dice; the test set is only scored, once per run.

Steps whose output exists are skipped, so an interrupted comparison continues where it stopped. ``summarize`` writes
``results.csv``, ``results.md`` (mean +- std over seeds of the per-volume 3D Dice per class and the foreground mean)
and ``results.png``.
"""

from __future__ import annotations

import ast
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]
RANDOM_ARM = "random"


def _parse(value, default):
    if value is None:
        return default
    return ast.literal_eval(value) if isinstance(value, str) else value


def _override_args(overrides: dict) -> list[str]:
    # repr, not JSON: fire reads Python literals, so JSON false would arrive as the (truthy) string "false"
    return [item for key, value in overrides.items() for item in (f"--{key}", repr(value))]


def _bundle_run(configs: list[Path], bundle_root: Path, dataset_dir: Path, overrides: dict, log: Path) -> None:
    """One ``python -m monai.bundle run``; its output goes to ``log`` (the last lines are shown on failure)."""
    config_arg = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    logging_conf = configs[0].parent / "logging.conf"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg, "--bundle_root", str(bundle_root),
           "--dataset_dir", str(dataset_dir), "--logging_file", str(logging_conf), *_override_args(overrides)]
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
    print(f"    done in {time.time() - start:.0f} s (log {log})", flush=True)


def run(
    datalist: str,
    output_dir: str,
    methods=None,
    finetune_bundle: str = "bundles/coral_mri_segmentation",
    overlay: str | None = "cpu_small.json",
    overrides=None,
    pretrain_overrides=None,
    seeds=None,
    include_random: bool = True,
) -> None:
    """Pretrain, fine-tune and evaluate every arm for every seed, then summarise.

    Args:
        datalist: the datalist (roles training = the few labelled volumes, unlabeled, validation, test).
        output_dir: where every bundle root, log and the results go.
        methods: ``{name: bundle folder}`` of the pretraining methods (default: CORAL).
        finetune_bundle: the bundle whose ``train.json``/``inference.json``/``evaluate.json`` fine-tune and score.
        overlay: a config file name in each bundle's ``configs/`` merged after the main one (``None``: none).
        overrides: config values for every step (e.g. ``{'num_classes': 3, 'patch_size': [48, 64]}``).
        pretrain_overrides: extra config values for the pretraining steps only: one dict for every method, or
            ``{method: dict}`` per method (e.g. a patch whose bottleneck suits SAL's window).
        seeds: fine-tuning seeds (default ``[0, 1, 2]``); pretraining uses the first.
        include_random: add the random-initialisation arm.
    """
    methods = _parse(methods, {"coral": "bundles/coral_mri_segmentation"})
    overrides = _parse(overrides, {})
    pretrain_overrides = _parse(pretrain_overrides, {})
    seeds = [int(s) for s in _parse(seeds, [0, 1, 2])]
    out = Path(output_dir).resolve()
    datalist = Path(datalist).resolve()
    dataset_dir = datalist.parent
    ft_configs = REPO_ROOT / finetune_bundle / "configs"
    extra = [ft_configs / overlay] if overlay else []
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps({
        "datalist": str(datalist), "methods": methods, "finetune_bundle": finetune_bundle, "overlay": overlay,
        "overrides": overrides, "pretrain_overrides": pretrain_overrides, "seeds": seeds,
    }, indent=2))

    checkpoints: dict[str, Path | None] = {}
    for name, bundle in methods.items():
        configs = REPO_ROOT / bundle / "configs"
        root = out / name / "pretrain"
        checkpoints[name] = root / "models" / "pretrain.pt"
        if checkpoints[name].is_file():
            print(f"[{name}] pretraining done earlier: {checkpoints[name]}")
            continue
        print(f"[{name}] pretraining on the unlabelled pool")
        pre_extra = [configs / overlay] if overlay else []
        per_method = pretrain_overrides and set(pretrain_overrides) <= set(methods)
        method_overrides = pretrain_overrides.get(name, {}) if per_method else pretrain_overrides
        _bundle_run([configs / "pretrain.json", *pre_extra], root, dataset_dir,
                    {**overrides, **method_overrides, "seed": seeds[0], "datalist": str(datalist)},
                    root / "pretrain.log")
    if include_random:
        checkpoints[RANDOM_ARM] = None

    for arm, ckpt in checkpoints.items():
        for seed in seeds:
            root = out / arm / f"seed{seed}"
            summary = root / "eval" / "metrics_summary.json"
            if summary.is_file():
                print(f"[{arm} seed {seed}] done earlier: {summary}")
                continue
            print(f"[{arm} seed {seed}] fine-tuning ({'from ' + str(ckpt) if ckpt else 'random init'})")
            ft = {**overrides, "seed": seed, "datalist": str(datalist), "load_pretrain": ckpt is not None}
            if ckpt is not None:
                ft["pretrained_ckpt"] = str(ckpt)
            _bundle_run([ft_configs / "train.json", *extra], root, dataset_dir, ft, root / "train.log")
            print(f"[{arm} seed {seed}] test inference + evaluation")
            _bundle_run([ft_configs / "inference.json", ft_configs / "evaluate.json", *extra], root, dataset_dir,
                        {**overrides, "datalist": str(datalist)}, root / "evaluate.log")
    summarize(output_dir)


def summarize(output_dir: str) -> None:
    """Collect ``<arm>/seed<k>/eval/metrics_summary.json`` into ``results.csv``, ``results.md`` and ``results.png``."""
    out = Path(output_dir)
    rows = []
    for summary_path in sorted(out.glob("*/seed*/eval/metrics_summary.json")):
        summary = json.loads(summary_path.read_text())
        arm, seed = summary_path.parents[2].name, int(summary_path.parents[1].name.removeprefix("seed"))
        row = {"arm": arm, "seed": seed, "n_test": summary["n_cases"],
               "dice_mean_fg": summary["mean_foreground"]["dice"]["mean"]}
        for stats in summary["classes"].values():
            row[f"dice_{stats['name']}"] = stats["dice"]["mean"]
        best_log = summary_path.parents[1] / "train.log"
        row["best_val_dice"] = _best_val(best_log)
        rows.append(row)
    if not rows:
        raise SystemExit(f"no finished run under {out}")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    metrics = [c for c in columns if c.startswith("dice_") or c == "best_val_dice"]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = ["| arm | seeds | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    table = {}
    for arm in arms:
        sub = [r for r in rows if r["arm"] == arm]
        cells = []
        for m in metrics:
            values = [r[m] for r in sub if r.get(m) is not None]
            mean = statistics.fmean(values) if values else float("nan")
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            table[(arm, m)] = (mean, std)
            cells.append(f"{mean:.4f} +- {std:.4f}")
        lines.append(f"| {arm} | {','.join(str(r['seed']) for r in sub)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n\nDice: per-volume 3D Dice on the test role, per class and averaged over "
                                     "foreground classes, then mean +- sample std over seeds; best_val_dice: the "
                                     "validation Dice of the selected checkpoint.\n")
    print(text)
    _plot(table, arms, out / "results.png")


def _best_val(log: Path) -> float | None:
    if not log.is_file():
        return None
    best = None
    for line in log.read_text().splitlines():
        if "best val_mean_dice" in line:
            best = float(line.split("best val_mean_dice")[1].split(",")[0])
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


if __name__ == "__main__":
    fire.Fire({"run": run, "summarize": summarize})
