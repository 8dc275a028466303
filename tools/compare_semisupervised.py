"""Semi-supervised protocol: train the CRLN bundle in each of its modes (supervised-only, mean teacher, CRLN) with the
same labelled volumes, unlabelled pool, budget and seeds, then report test metrics as mean +- std over seeds.

    python tools/compare_semisupervised.py run --datalist data/la_half/datalist.json --output_dir runs/crln_la_half \\
        --overrides "{'epochs': 10, 'iterations_per_epoch': 30}" --seeds "[0,1,2]"

Every step is a ``python -m monai.bundle run`` of the bundle configs (the commands a user types), each in its own
bundle root ``<output_dir>/<mode>/seed<k>``: ``train.json`` (+ ``overlay``) with ``--mode <mode> --seed <k>``, then
``inference.json`` + ``evaluate.json`` on the test role with the same mode, for the model selected on validation
(``models/model.pt`` -> ``eval/``) and for the last model (``models/model_last.pt``, the shipped network (the EMA
teacher unless ``model_to_ship`` is overridden) of the last training checkpoint -> ``eval_last/``). Nothing is selected on the test set; it is only scored. The modes differ only in what the unlabelled pool contributes (none;
mean-teacher consistency; rectified pseudo-labels + CPS): same network backbone, optimiser, schedule, iterations,
labelled batch and augmentation.

Steps whose output exists are skipped, so an interrupted comparison continues where it stopped (an interrupted
training resumes from its last checkpoint). ``summarize`` writes ``results.csv``, ``results.md`` (mean +- std over
seeds of the per-volume 3D Dice, Jaccard, HD95 and ASD) and ``results.png`` for the selected models, and the same as
``results_last.*`` for the last models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

try:
    from comparison_common import REPO_ROOT, bundle_run, overlay_files, parse_literal, record_seconds, summarize
except ImportError:  # imported from elsewhere rather than run as `python tools/compare_semisupervised.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comparison_common import REPO_ROOT, bundle_run, overlay_files, parse_literal, record_seconds, summarize

MODES = ("supervised", "mean_teacher", "crln")
LAST_DIR = "eval_last"  # evaluation of the last model (the selected one is in eval/)


def run(
    datalist: str,
    output_dir: str,
    bundle: str = "bundles/crln_mri_segmentation",
    modes=None,
    overlay="cpu_small.json",
    overrides=None,
    seeds=None,
) -> None:
    """Train and evaluate every mode for every seed, then summarise.

    Args:
        datalist: the datalist (roles training = the labelled volumes, unlabeled, validation, test).
        output_dir: where every bundle root, log and the results go.
        bundle: the semi-supervised bundle (its ``train.json`` has a ``mode`` switch).
        modes: the arms, in order (default ``['supervised', 'mean_teacher', 'crln']``).
        overlay: config file name(s) in the bundle's ``configs/`` merged after the main one, in order: one name,
            several joined by commas (``cpu_small.json,adam.json``) or a list; ``None``: none.
        overrides: config values for every step (e.g. ``{'num_classes': 3, 'patch_size': [32, 48, 32]}``).
        seeds: training seeds (default ``[0, 1, 2]``).
    """
    modes = list(parse_literal(modes, MODES))
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    overrides = parse_literal(overrides, {})
    seeds = [int(s) for s in parse_literal(seeds, [0, 1, 2])]
    out = Path(output_dir).resolve()
    datalist = Path(datalist).resolve()
    if not datalist.is_file():
        raise SystemExit(f"datalist not found: {datalist} (make one with tools/prepare_data.py)")
    dataset_dir = datalist.parent
    configs = REPO_ROOT / bundle / "configs"
    extra = overlay_files(configs, overlay)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps({
        "datalist": str(datalist), "bundle": bundle, "modes": modes, "overlay": [q.name for q in extra],
        "overrides": overrides, "seeds": seeds,
    }, indent=2))

    evaluate = [configs / "inference.json", configs / "evaluate.json", *extra]
    for seed in seeds:  # seed-major: a comparison stopped early still has every mode for the first seeds
        for mode in modes:
            root = out / mode / f"seed{seed}"
            common = {**overrides, "mode": mode, "datalist": str(datalist)}
            summary = root / "eval" / "metrics_summary.json"
            if summary.is_file():
                print(f"[{mode} seed {seed}] done earlier: {summary}")
            else:
                print(f"[{mode} seed {seed}] training")
                seconds = bundle_run([configs / "train.json", *extra], root, dataset_dir, {**common, "seed": seed},
                                     root / "train.log")
                record_seconds(root, "train", seconds)
                print(f"[{mode} seed {seed}] test inference + evaluation of the selected (best validation) model")
                bundle_run(evaluate, root, dataset_dir, common, root / "evaluate.log")
            if (root / LAST_DIR / "metrics_summary.json").is_file():
                continue
            print(f"[{mode} seed {seed}] test inference + evaluation of the last model")
            last = export_last_model(root, overrides.get("model_to_ship", "teacher"))
            bundle_run(evaluate, root, dataset_dir, {**common, "checkpoint": str(last),
                                                     "output_dir": str(root / LAST_DIR / "predictions"),
                                                     "metrics_dir": str(root / LAST_DIR)}, root / "evaluate_last.log")
    summarize_modes(output_dir)


def export_last_model(run_root: Path, which: str = "teacher") -> Path:
    """``<run_root>/models/model_last.pt``: the EMA teacher (``which="teacher"``, what the bundle ships) or the student
    (``"student"``) of the newest training checkpoint, as a plain state dict."""
    import torch

    from volssl.engines.handlers import latest_checkpoint
    from volssl.networks.checkpoint import extract_state_dict

    if which not in ("teacher", "student"):
        raise SystemExit(f"model_to_ship must be 'teacher' or 'student', got {which!r}")
    ckpt = latest_checkpoint(run_root / "models" / "train_checkpoints")
    if ckpt is None:
        raise SystemExit(f"no training checkpoint under {run_root / 'models' / 'train_checkpoints'}")
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    if which == "teacher":
        state = extract_state_dict(saved.get("step", {}), ckpt, key="teacher")
    else:
        state = extract_state_dict(saved, ckpt, key="network")
    path = run_root / "models" / "model_last.pt"
    torch.save(state, path)
    return path


def summarize_modes(output_dir: str) -> None:
    """Rewrite the results from the finished runs under ``output_dir``: ``results.*`` for the models selected on
    validation, ``results_last.*`` for the last models."""
    summarize(output_dir, arm_order=list(MODES))
    summarize(output_dir, arm_order=list(MODES), eval_dir=LAST_DIR, name="results_last")


if __name__ == "__main__":
    fire.Fire({"run": run, "summarize": summarize_modes})
