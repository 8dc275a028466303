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
``results.csv``, ``results.md`` (mean +- std over seeds of the per-volume 3D Dice, Jaccard, HD95 and ASD averaged over
the foreground classes, and the Dice per class) and ``results.png`` (see ``comparison_common.summarize``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

try:
    from comparison_common import REPO_ROOT, bundle_run, overlay_files, parse_literal, record_seconds, summarize
except ImportError:  # imported from elsewhere rather than run as `python tools/compare_pretraining.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comparison_common import REPO_ROOT, bundle_run, overlay_files, parse_literal, record_seconds, summarize

RANDOM_ARM = "random"


def run(
    datalist: str,
    output_dir: str,
    methods=None,
    finetune_bundle: str = "bundles/coral_mri_segmentation",
    overlay="cpu_small.json",
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
        overlay: config file name(s) in each bundle's ``configs/`` merged after the main one, in order: one name,
            several joined by commas or a list; ``None``: none.
        overrides: config values for every step (e.g. ``{'num_classes': 3, 'patch_size': [48, 64]}``).
        pretrain_overrides: extra config values for the pretraining steps only: one dict for every method, or
            ``{method: dict}`` per method (e.g. a patch whose bottleneck suits SAL's window).
        seeds: fine-tuning seeds (default ``[0, 1, 2]``); pretraining uses the first.
        include_random: add the random-initialisation arm.
    """
    methods = parse_literal(methods, {"coral": "bundles/coral_mri_segmentation"})
    overrides = parse_literal(overrides, {})
    pretrain_overrides = parse_literal(pretrain_overrides, {})
    seeds = [int(s) for s in parse_literal(seeds, [0, 1, 2])]
    out = Path(output_dir).resolve()
    datalist = Path(datalist).resolve()
    dataset_dir = datalist.parent
    ft_configs = REPO_ROOT / finetune_bundle / "configs"
    extra = overlay_files(ft_configs, overlay)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps({
        "datalist": str(datalist), "methods": methods, "finetune_bundle": finetune_bundle,
        "overlay": [q.name for q in extra], "overrides": overrides, "pretrain_overrides": pretrain_overrides,
        "seeds": seeds,
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
        pre_extra = overlay_files(configs, overlay)
        per_method = pretrain_overrides and set(pretrain_overrides) <= set(methods)
        method_overrides = pretrain_overrides.get(name, {}) if per_method else pretrain_overrides
        bundle_run([configs / "pretrain.json", *pre_extra], root, dataset_dir,
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
            seconds = bundle_run([ft_configs / "train.json", *extra], root, dataset_dir, ft, root / "train.log")
            record_seconds(root, "train", seconds)
            print(f"[{arm} seed {seed}] test inference + evaluation")
            bundle_run([ft_configs / "inference.json", ft_configs / "evaluate.json", *extra], root, dataset_dir,
                       {**overrides, "datalist": str(datalist)}, root / "evaluate.log")
    summarize(output_dir)


if __name__ == "__main__":
    fire.Fire({"run": run, "summarize": summarize})
