"""Label-efficiency protocol: every arm on the same labelled sets and seeds (paired), several label counts, the
fine-tuning learning rate chosen per arm on validation, training to a plateau; paired differences against the
baseline with bootstrap 95 % confidence intervals and a label-efficiency curve.

    # slice pretraining (random init, PCL, CORAL, SAL), full and frozen-encoder fine-tuning
    python tools/label_efficiency.py run --datalist runs/data/acdc96/datalist.json --output_dir runs/le_acdc \\
        --family slice --label_counts "[1,2]" --n_sets 3 --seeds "[0,1]" --group_regex 'patient\\d+' \\
        --lr_grid "[1e-3,3e-4]" --patience 5 --min_epochs 0 --overrides "{'patch_size': [96, 96]}" \\
        --train_overrides "{'epochs': 40, 'iterations_per_epoch': 50}" --pretrain_overrides "{'pretrain_epochs': 50}"
    # semi-supervised (supervised-only, mean teacher, CRLN) on LA-half, 8 labelled volumes
    python tools/label_efficiency.py run --datalist runs/data/la_pool/datalist.json --output_dir runs/le_la \\
        --family semi --label_counts "[8]" --n_sets 3 --seeds "[0,1]" --patience 5 --min_epochs 0 \\
        --train_overrides "{'epochs': 40, 'iterations_per_epoch': 50, 'val_interval': 1}" \\
        --eval_variants "{'student': {'checkpoint': '{root}/models/model_student.pt'}}"
    # pretraining budget curve: one 800-epoch pretraining per method, snapshots after 50/200/800 epochs as arms
    python tools/label_efficiency.py run ... --budget_epochs "[50,200,800]"        # + budget.md/csv/png
    # the released CORAL/PCL fine-tuning recipe (bundles' paper_finetune.json) instead of ours
    python tools/label_efficiency.py run ... --train_overlay paper_finetune.json --lr_grid "[5e-5]" --patience None
    python tools/label_efficiency.py summarize runs/le_acdc
    python tools/label_efficiency.py run ... --dry_run     # the plan: every step, done or to do, nothing run
    bash tools/evidence_runs.sh [--dry-run]                # the evidence runs still to do, each such a command
    python tools/label_efficiency.py crop runs/data/acdc/datalist.json runs/data/acdc96 --size "[96,96]"

**Data.** ``--datalist``'s ``training`` role is the *labelled pool*: labelled sets are drawn from it (convert with
every candidate labelled, e.g. ``prepare_data.py acdc ... --n_labeled_patients 70`` or ``prepare_data.py la ...
--n_labeled 72``). Its ``validation`` role selects checkpoints and learning rates; its ``test`` role is only scored.
Labelled set ``s`` at count ``k``: the first ``k`` groups (``--group_regex``, e.g. ``patient\\d+`` keeps both ACDC
frames of a patient together) of a permutation of the pool seeded by ``(set_seed, s)``, so a set at a larger count
contains the same set at a smaller one; the rest of the pool joins the ``unlabeled`` role (CRLN's unlabelled data).
Each set is written as ``sets/n<k>_set<s>.json`` (absolute paths). Slice pretraining uses the base datalist's
``training`` + ``unlabeled`` (the whole pool, no labels read), once per method (or once per seed with
``--pretrain_per_seed``), shared by every labelled set.

**Arms.** ``--family slice``: ``random`` (baseline, random init), ``pcl`` (``pretrain.json`` + ``pcl.json`` of the
CORAL bundle), ``coral``, ``sal``; all fine-tuned with ``--finetune_bundle``'s ``train.json`` in the modes of
``--finetune``: ``full`` and ``frozen`` (``freeze_encoder=True``: decoder and head only, the encoder kept in eval
mode, which isolates the representation). ``--family semi``: the CRLN bundle's ``mode`` ``supervised`` (baseline),
``mean_teacher``, ``crln``; with ``--match_budget`` (default) the other arms train for as many epochs as the
baseline did on the same pair before it stopped (its plateau), without early stopping.

**Each run.** ``train.json`` (+ ``--overlay``) with ``learning_rate`` from ``--lr_grid`` (``min_learning_rate =
min_lr_ratio * lr`` for the slice bundles' cosine schedule) and ``early_stop_patience=--patience`` (validations
without a better validation Dice, counted only after ``--min_epochs``, default the bundles' ``early_stop_min_epochs``
= 10; the checkpoint kept is the best on validation, or with ``paper_finetune.json`` the last epoch's). The learning
rate of each (arm, fine-tuning mode, count) is the grid value with the highest mean best-validation Dice over the
first ``--lr_tuning_pairs`` (labelled set, seed) pairs; every other pair runs at that value only. The selected model
is then scored on the test role (``inference.json`` + ``evaluate.json``: per-volume 3D Dice, Jaccard, HD95, ASD, the
Dice pooled over 2D slices).

**Resuming.** Every step leaves a marker (``models/pretrain.pt``; ``train_done.json``; ``eval/metrics_summary.json``):
rerunning the same command skips finished steps and resumes an interrupted training from its last checkpoint. The
settings that define the runs are kept in ``protocol.json`` and must not change for an output folder (arms, counts,
sets and seeds may be added).

**Outputs** (``summarize``, also at the end of ``run``): ``runs.csv`` (one row per run), ``paired.csv`` /
``paired.md`` (per fine-tuning mode and count, each arm minus the baseline over the same pairs: mean, bootstrap 95 %
CI, paired t interval, the t interval over labelled sets (seeds of a set averaged first), sd, pairs better, and the
same paired comparison of the Dice pooled over 2D slices; see ``paired_stats.py`` for the bootstrap; with
``--eval_variants`` also per extra evaluation, e.g. a CRLN teacher), ``curve.png`` (test Dice against labelled volumes, one line per arm, a
95 % bootstrap band over pairs; one panel per fine-tuning mode) and ``lr_choice.json``. ``runs.csv`` has each
run's training throughput (``its_per_s``, from its log) and ``paired.md`` the compute the protocol took.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

import fire
import numpy as np

try:
    from comparison_common import (MEAN_FG_METRICS, POOLED_COLUMN, REPO_ROOT, bundle_run, overlay_files, parse_literal,
                                   record_seconds)
    from paired_stats import bootstrap_mean_ci, paired_summary, t_interval
except ImportError:  # imported from elsewhere rather than run as `python tools/label_efficiency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comparison_common import (MEAN_FG_METRICS, POOLED_COLUMN, REPO_ROOT, bundle_run, overlay_files, parse_literal,
                                   record_seconds)
    from paired_stats import bootstrap_mean_ci, paired_summary, t_interval

CORAL_BUNDLE = "bundles/coral_mri_segmentation"
SAL_BUNDLE = "bundles/sal_mri_segmentation"
CRLN_BUNDLE = "bundles/crln_mri_segmentation"
# slice family: arm -> (pretraining bundle, extra pretraining overlays) or None (random init, the baseline)
SLICE_ARMS = {"random": None, "pcl": (CORAL_BUNDLE, ("pcl.json",)), "coral": (CORAL_BUNDLE, ()),
              "sal": (SAL_BUNDLE, ())}
SEMI_ARMS = ("supervised", "mean_teacher", "crln")  # the CRLN bundle's modes; supervised is the baseline
FAMILIES = {"slice": {"baseline": "random", "arms": tuple(SLICE_ARMS), "finetune": ("full", "frozen")},
            "semi": {"baseline": "supervised", "arms": SEMI_ARMS, "finetune": ("full",)}}
# settings that define the runs of an output folder (a change would mix incomparable runs)
FIXED_SETTINGS = ("datalist", "family", "finetune_bundle", "semi_bundle", "overlay", "overrides", "train_overrides",
                  "pretrain_overrides", "patience", "lr_grid", "lr_tuning_pairs", "min_lr_ratio", "group_regex",
                  "set_seed", "match_budget", "pretrain_per_seed", "train_overlay", "min_epochs", "budget_epochs")
# settings added after the first protocols were run: an older protocol.json without them ran with these values (no
# minimum number of epochs before early stopping existed then)
SETTING_DEFAULTS = {"train_overlay": [], "min_epochs": 0, "budget_epochs": []}
TRAIN_DONE = "train_done.json"
BUDGET_SEP = "_e"  # a budget-curve arm is <pretraining arm>_e<pretraining epochs>, e.g. coral_e200


def budget_arm(arm: str, epochs: int) -> str:
    return f"{arm}{BUDGET_SEP}{int(epochs)}"


def split_arm(arm: str) -> tuple[str, int | None]:
    """``coral_e200`` -> ``("coral", 200)``; an arm without a budget -> ``(arm, None)``."""
    base, sep, tail = arm.rpartition(BUDGET_SEP)
    if sep and tail.isdigit() and base:
        return base, int(tail)
    return arm, None


# --- labelled sets ------------------------------------------------------------------------------------------------


def _absolute(datalist: dict, role: str) -> list[dict]:
    from volssl.data.datalist import resolve_role

    return [{k: str(v) for k, v in e.items()} for e in resolve_role(datalist, role)]


def draw_labelled_sets(datalist_path: Path, label_counts: list[int], n_sets: int, group_regex: str | None,
                       set_seed: int) -> dict[tuple[int, int], dict]:
    """The derived datalists ``{(k, s): datalist}``: ``k`` groups of the pool (``training`` role) labelled, the
    rest of the pool added to ``unlabeled``, validation and test unchanged; all paths absolute."""
    from volssl.data.datalist import case_id, load_datalist
    from volssl.data.split import group_by_regex

    base = load_datalist(datalist_path)
    pool = _absolute(base, "training")
    group = group_by_regex(group_regex)
    groups: dict[str, list[dict]] = {}
    for entry in sorted(pool, key=lambda e: e["image"]):
        groups.setdefault(group(case_id(entry["image"])), []).append(entry)
    keys = sorted(groups)
    if max(label_counts) > len(keys):
        raise SystemExit(f"label count {max(label_counts)} exceeds the {len(keys)} groups of the labelled pool "
                         f"('training' role of {datalist_path}; group_regex {group_regex!r})")
    fixed = {k: v for k, v in base.items() if k not in ("training", "unlabeled", "validation", "test", "dataset_dir")
             and not k.startswith("_")}
    common = {"unlabeled": _absolute(base, "unlabeled"), "validation": _absolute(base, "validation"),
              "test": _absolute(base, "test")}
    out = {}
    for s in range(n_sets):
        order = [keys[i] for i in np.random.default_rng([set_seed, s]).permutation(len(keys))]
        for k in label_counts:
            chosen = set(order[:k])
            out[(k, s)] = {**fixed, "training": [e for g in keys if g in chosen for e in groups[g]],
                           "unlabeled": [e for g in keys if g not in chosen for e in groups[g]] + common["unlabeled"],
                           "validation": common["validation"], "test": common["test"]}
    return out


# --- the plan -----------------------------------------------------------------------------------------------------


def _lr_name(lr: float) -> str:
    return f"lr{lr:g}"


class Protocol:
    """The runs of one output folder and where each one lives."""

    def __init__(self, settings: dict, arms: list[str], label_counts: list[int], n_sets: int, seeds: list[int],
                 finetune: list[str], out: Path) -> None:
        self.s = settings
        self.family = FAMILIES[settings["family"]]
        self.baseline = self.family["baseline"]
        budgets = [int(b) for b in settings.get("budget_epochs") or []]
        self.budgets = sorted(set(budgets))
        arms = [a for a in arms if a != self.baseline]
        if self.budgets:  # every pretraining arm once per budget (already expanded arms are kept as they are)
            arms = [a if split_arm(a)[1] is not None else budget_arm(a, b)
                    for a in arms for b in ([None] if split_arm(a)[1] is not None else self.budgets)]
            arms = list(dict.fromkeys(arms))
        self.arms = [self.baseline] + arms
        self.pretrain_arms = list(dict.fromkeys(split_arm(a)[0] for a in arms))
        self.label_counts, self.n_sets, self.seeds, self.finetune = label_counts, n_sets, seeds, finetune
        self.out = out
        self.pairs = [(s, seed) for s in range(n_sets) for seed in seeds]
        self.tuning_pairs = self.pairs[: max(1, int(settings["lr_tuning_pairs"]))]
        self.lr_grid = [float(v) for v in settings["lr_grid"]]

    def set_path(self, k: int, s: int) -> Path:
        return self.out / "sets" / f"n{k}_set{s}.json"

    def pretrain_root(self, arm: str, seed: int) -> Path:
        return self.out / "pretrain" / (f"{arm}_seed{seed}" if self.s["pretrain_per_seed"] else arm)

    def pretrained_ckpt(self, arm: str, seed: int) -> Path:
        """The encoder an arm fine-tunes from: ``pretrain.pt``, or the snapshot of its budget."""
        base, epochs = split_arm(arm)
        models = self.pretrain_root(base, self.pretrain_seed(seed)) / "models"
        return models / ("pretrain.pt" if epochs is None else f"pretrain_epoch{epochs}.pt")

    def pretrain_seed(self, seed: int) -> int:
        return seed if self.s["pretrain_per_seed"] else self.seeds[0]

    def run_root(self, ft: str, k: int, s: int, seed: int, arm: str, lr: float) -> Path:
        return self.out / "runs" / ft / f"n{k}" / f"set{s}" / f"seed{seed}" / arm / _lr_name(lr)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def train_record(root: Path) -> dict:
    """What the tool records after a training step: the validation curve's best value and epoch, the epochs run and
    whether the run stopped early (from ``logs/train/train_curve.csv``, written by ``LearningCurveWriter``)."""
    curve = root / "logs" / "train" / "train_curve.csv"
    rows = []
    if curve.is_file():
        with open(curve) as f:
            rows = list(csv.DictReader(f))
    val = [(float(r["val_mean_dice"]), int(float(r["epoch"]))) for r in rows if r.get("val_mean_dice")]
    best = max(val, key=lambda v: (v[0], -v[1])) if val else (float("nan"), -1)
    epochs = max((int(float(r["epoch"])) for r in rows), default=0)
    return {"best_val_dice": best[0], "best_epoch": best[1], "epochs_run": epochs}


def log_throughput(log: Path) -> dict:
    """Training iterations per second from a bundle log: the iterations per epoch (the trainer's progress bar) over
    the trainer's epoch times (ignite's ``Epoch[k] Complete. Time taken``, which include the epoch-end handlers such
    as validation); the first epoch is left out when there are several (start-up). Empty when the log has neither."""
    import re

    if not log.is_file():
        return {}
    text = log.read_text(errors="replace")
    bars = re.findall(r"\[(\d+)/(\d+)\]\s+100%", text)
    times = [int(h) * 3600 + int(m) * 60 + float(sec) for h, m, sec in re.findall(
        r"SupervisedTrainer - INFO - Epoch\[\d+\] Complete\. Time taken: (\d+):(\d+):([\d.]+)", text)]
    if not bars or not times:
        return {}
    per_epoch = int(bars[-1][1])
    timed = times[1:] if len(times) > 1 else times
    return {"iterations_per_epoch": per_epoch, "its_per_s": per_epoch * len(timed) / max(sum(timed), 1e-9)}


# --- run ------------------------------------------------------------------------------------------------------------


def _settings(args: dict) -> dict:
    return {k: args[k] for k in FIXED_SETTINGS}


def _check_settings(out: Path, settings: dict) -> None:
    old = _read_json(out / "protocol.json")
    if old is None:
        return
    before = {**SETTING_DEFAULTS, **old.get("settings", {})}
    changed = [k for k in FIXED_SETTINGS if json.dumps(before.get(k)) != json.dumps(settings[k])]
    if changed:
        hint = ""
        if "min_epochs" in changed and "min_epochs" not in old.get("settings", {}):
            hint = "; it was run before early_stop_min_epochs existed: pass --min_epochs 0 to continue it"
        raise SystemExit(f"{out} holds a protocol with other settings ({', '.join(changed)}): use another output_dir "
                         f"(arms, label counts, sets and seeds may be added to an existing one){hint}")


def run(
    datalist: str,
    output_dir: str,
    family: str = "slice",
    arms=None,
    label_counts=None,
    n_sets: int = 3,
    seeds=None,
    finetune=None,
    lr_grid=None,
    lr_tuning_pairs: int = 1,
    patience: int | None = 10,
    overlay="cpu_small.json",
    overrides=None,
    train_overrides=None,
    pretrain_overrides=None,
    group_regex: str | None = None,
    set_seed: int = 0,
    min_lr_ratio: float = 0.1,
    match_budget: bool = True,
    pretrain_per_seed: bool = False,
    train_overlay=None,
    min_epochs: int | None = None,
    budget_epochs=None,
    finetune_bundle: str = CORAL_BUNDLE,
    semi_bundle: str = CRLN_BUNDLE,
    bootstrap_unit: str = "pairs",
    eval_variants=None,
    dry_run: bool = False,
) -> None:
    """Run (or continue) the protocol, then summarise.

    Args:
        datalist: the base datalist (``training`` = the labelled pool; ``validation``; ``test``; ``unlabeled``).
        output_dir: where the sets, every bundle root, the logs and the results go.
        family: ``slice`` (random / PCL / CORAL / SAL) or ``semi`` (supervised / mean teacher / CRLN).
        arms: the arms (default: all of the family); the baseline is always included and comes first.
        label_counts: labelled groups per set (default ``[1, 2]``).
        n_sets: labelled sets per count.
        seeds: training seeds (default ``[0, 1]``); every (set, seed) pair is run by every arm.
        finetune: fine-tuning modes, ``full`` and/or ``frozen`` (slice family; default both); semi: ``full``.
        lr_grid: learning rates tried per arm (default: the overlay's ``learning_rate`` only, no tuning).
        lr_tuning_pairs: the first this many (set, seed) pairs run the whole grid and choose the learning rate.
        patience: early stopping after this many validations without a better validation Dice (``None``: off).
        overlay: config file name(s) in each bundle's ``configs/`` merged after the main one, for every step.
        overrides: config values for every step (e.g. ``{'num_classes': 3, 'patch_size': [96, 96]}``).
        train_overrides: config values for the training steps only (e.g. ``{'epochs': 100,
            'iterations_per_epoch': 20}``).
        pretrain_overrides: config values for the pretraining steps only: one dict, or ``{arm: dict}``.
        group_regex: cases whose names share this pattern's match are drawn together (``patient\\d+`` for ACDC).
        set_seed: seed of the labelled-set draws.
        min_lr_ratio: slice family: ``min_learning_rate = min_lr_ratio * learning_rate``.
        match_budget: semi family: the non-baseline arms train as many epochs as the baseline did on the same pair.
        pretrain_per_seed: pretrain each method once per seed (pretraining variance enters the pairs) instead of once.
        train_overlay: config file name(s) merged after ``overlay`` for the fine-tuning steps only, e.g.
            ``paper_finetune.json`` (the released CORAL/PCL fine-tuning recipe; with ``--lr_grid "[5e-5]"`` and
            ``--patience None``, since the tool sets the learning rate and the early stopping of every run).
        min_epochs: ``early_stop_min_epochs`` of every training run (the patience counts only after this many
            epochs); ``None``: the bundle's value (10), recorded in ``protocol.json``. A protocol folder made before
            this option existed ran with 0: continue it with ``--min_epochs 0``.
        budget_epochs: pretraining budget curve, e.g. ``[50, 200, 800]``: each pretraining method runs once for the
            largest number of epochs, keeping its encoder after each of these epochs, and every snapshot is
            fine-tuned as an arm of its own (``coral_e50``, ``coral_e200``, ...); ``summarize`` adds ``budget.md``,
            ``budget.csv`` and ``budget.png`` (paired gain against pretraining iterations). Empty: one pretraining
            of ``pretrain_epochs`` per method.
        finetune_bundle: the bundle whose train/inference/evaluate configs fine-tune every slice arm.
        semi_bundle: the semi-supervised bundle (``mode`` switch).
        bootstrap_unit: ``pairs`` or ``pairs_and_cases`` (see ``paired_stats.py``).
        eval_variants: more test evaluations of every run, ``{name: config values of inference.json +
            evaluate.json}``, ``{root}`` in a string value standing for the run's bundle root, e.g. ``{'student':
            {'checkpoint': '{root}/models/model_student.pt'}}`` (the CRLN bundle ships the EMA teacher as
            ``model.pt`` and keeps the student selected on its own validation Dice as ``model_student.pt``); each
            writes ``eval_<name>/`` and gets its own rows in the paired table (column ``model``). Default: none
            (the model selected on validation, ``eval/``).
        dry_run: print the plan (each step, done or to do) and run nothing.
    """
    if family not in FAMILIES:
        raise SystemExit(f"unknown family {family!r}: choose one of {list(FAMILIES)}")
    fam = FAMILIES[family]
    arms = list(parse_literal(arms, fam["arms"]))
    unknown = sorted(set(arms) - set(fam["arms"]))
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown} for family {family}: choose from {list(fam['arms'])}")
    finetune = list(parse_literal(finetune, fam["finetune"]))
    bad = sorted(set(finetune) - set(fam["finetune"]))
    if bad:
        raise SystemExit(f"fine-tuning mode(s) {bad} not available for family {family}: {list(fam['finetune'])}")
    label_counts = sorted(int(k) for k in parse_literal(label_counts, [1, 2]))
    seeds = [int(s) for s in parse_literal(seeds, [0, 1])]
    out = Path(output_dir).resolve()
    datalist_path = Path(datalist).resolve()
    if not datalist_path.is_file():
        raise SystemExit(f"datalist not found: {datalist_path} (make one with tools/prepare_data.py)")
    bundle = finetune_bundle if family == "slice" else semi_bundle
    configs = REPO_ROOT / bundle / "configs"
    extra = overlay_files(configs, overlay)
    train_extra = overlay_files(configs, train_overlay)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), *map(str, extra), *map(str, train_extra)])
    given = {**parse_literal(overrides, {}), **parse_literal(train_overrides, {})}
    if lr_grid is None:  # no tuning: the learning rate of the overrides, else of the configs
        lr_grid = [float(given.get("learning_rate", parser["learning_rate"]))]
    if min_epochs is None:  # the configs' value, recorded, so that a later change of the default cannot mix runs
        min_epochs = given.get("early_stop_min_epochs", parser.get("early_stop_min_epochs", 0))
    settings = {"datalist": str(datalist_path), "family": family, "finetune_bundle": finetune_bundle,
                "semi_bundle": semi_bundle, "overlay": [q.name for q in extra],
                "overrides": parse_literal(overrides, {}), "train_overrides": parse_literal(train_overrides, {}),
                "pretrain_overrides": parse_literal(pretrain_overrides, {}),
                "patience": None if patience is None else int(patience),
                "lr_grid": [float(v) for v in parse_literal(lr_grid, [])], "lr_tuning_pairs": int(lr_tuning_pairs),
                "min_lr_ratio": float(min_lr_ratio), "group_regex": group_regex, "set_seed": int(set_seed),
                "match_budget": bool(match_budget), "pretrain_per_seed": bool(pretrain_per_seed),
                "train_overlay": [q.name for q in train_extra],
                "min_epochs": None if min_epochs is None else int(min_epochs),
                "budget_epochs": sorted({int(b) for b in parse_literal(budget_epochs, [])})}
    if settings["budget_epochs"] and family != "slice":
        raise SystemExit("budget_epochs is a pretraining budget: only for family 'slice'")
    if any(b < 1 for b in settings["budget_epochs"]):
        raise SystemExit(f"budget_epochs must be positive numbers of epochs, got {settings['budget_epochs']}")
    if not settings["lr_grid"]:
        raise SystemExit("lr_grid is empty")
    _check_settings(out, settings)
    proto = Protocol(settings, arms, label_counts, int(n_sets), seeds, finetune, out)
    sets = draw_labelled_sets(datalist_path, label_counts, proto.n_sets, group_regex, proto.s["set_seed"])
    variants = dict(parse_literal(eval_variants, {}))
    runner = _Runner(proto, configs, extra, dry_run, variants, train_extra)
    if not dry_run:
        from volssl.data.datalist import save_datalist

        out.mkdir(parents=True, exist_ok=True)
        (out / "protocol.json").write_text(json.dumps({
            "settings": settings, "arms": proto.arms, "label_counts": label_counts, "n_sets": proto.n_sets,
            "seeds": seeds, "finetune": finetune, "bootstrap_unit": bootstrap_unit, "eval_variants": variants},
            indent=2) + "\n")
        for (k, s), derived in sets.items():
            if not proto.set_path(k, s).is_file():
                save_datalist(derived, proto.set_path(k, s))
    runner.pretrain()
    runner.tune_and_train()
    runner.report()
    if not dry_run:
        summarize(output_dir, bootstrap_unit=bootstrap_unit)


class _Runner:
    """Walks the plan in a resumable order: pretraining; per count, fine-tuning mode and arm (baseline first) the
    learning-rate grid on the tuning pairs; then pair by pair (so a stopped protocol has whole pairs) the remaining
    runs at the chosen rate and the test evaluations."""

    def __init__(self, proto: Protocol, configs: Path, extra: list[Path], dry_run: bool, variants: dict,
                 train_extra: list[Path] = ()) -> None:
        self.p, self.configs, self.extra, self.dry_run, self.variants = proto, configs, extra, dry_run, variants
        self.train_extra = list(train_extra)  # overlays of the fine-tuning steps only (not pretraining, not test)
        self.todo: list[str] = []
        self.done = 0
        self.lr_choice: dict[str, float] = dict(_read_json(proto.out / "lr_choice.json") or {})

    # -- steps
    def _step(self, label: str, done: bool, action) -> None:
        if done:
            self.done += 1
            return
        if self.dry_run:
            self.todo.append(label)
            return
        print(f"[{label}]", flush=True)
        action()

    def _common(self, k: int, s: int) -> dict:
        p = self.p
        common = {**p.s["overrides"], "datalist": str(p.set_path(k, s))}
        return common

    def pretrain(self) -> None:
        p = self.p
        if p.s["family"] != "slice":
            return
        per_arm = p.s["pretrain_overrides"] and set(p.s["pretrain_overrides"]) <= set(SLICE_ARMS)
        for arm in p.pretrain_arms:
            if SLICE_ARMS[arm] is None:
                continue
            bundle, arm_overlays = SLICE_ARMS[arm]
            configs = REPO_ROOT / bundle / "configs"
            for seed in sorted({p.pretrain_seed(sd) for sd in p.seeds}):
                root = p.pretrain_root(arm, seed)
                files = [configs / "pretrain.json", *overlay_files(configs, [q.name for q in self.extra]),
                         *overlay_files(configs, list(arm_overlays))]
                arm_over = p.s["pretrain_overrides"].get(arm, {}) if per_arm else p.s["pretrain_overrides"]
                over = {**p.s["overrides"], **arm_over, "seed": seed, "datalist": p.s["datalist"]}
                if p.budgets:  # one run to the largest budget, its encoder kept after each budget's epoch
                    over.update({"pretrain_epochs": max(p.budgets), "save_pretrain_epochs": p.budgets})

                def action(files=files, root=root, over=over):
                    seconds = bundle_run(files, root, Path(p.s["datalist"]).parent, over, root / "pretrain.log")
                    record_seconds(root, "pretrain", seconds)

                self._step(f"pretrain {arm} seed {seed}", (root / "models" / "pretrain.pt").is_file(), action)

    def _train_overrides(self, ft: str, k: int, s: int, seed: int, arm: str, lr: float) -> dict | None:
        """The values of one training run, or ``None`` when it needs a baseline run that is not there yet."""
        p = self.p
        over = {**self._common(k, s), **p.s["train_overrides"], "seed": seed, "learning_rate": lr,
                "early_stop_patience": p.s["patience"]}
        if p.s.get("min_epochs") is not None:
            over["early_stop_min_epochs"] = p.s["min_epochs"]
        if p.s["family"] == "slice":
            over["min_learning_rate"] = lr * p.s["min_lr_ratio"]
            over["freeze_encoder"] = ft == "frozen"
            if SLICE_ARMS[split_arm(arm)[0]] is None:
                over["load_pretrain"] = False
            else:
                over["load_pretrain"] = True
                over["pretrained_ckpt"] = str(p.pretrained_ckpt(arm, seed))
        else:
            over["mode"] = arm
            if p.s["match_budget"] and arm != p.baseline:
                base_lr = self.lr_choice.get(self._choice_key(ft, k, p.baseline))
                record = None if base_lr is None else _read_json(
                    p.run_root(ft, k, s, seed, p.baseline, base_lr) / TRAIN_DONE)
                if record is None:
                    return None
                over["epochs"] = int(record["epochs_run"])
                over["early_stop_patience"] = None
        return over

    def _train(self, ft: str, k: int, s: int, seed: int, arm: str, lr: float) -> None:
        p = self.p
        root = p.run_root(ft, k, s, seed, arm, lr)
        label = f"train {ft} n{k} set{s} seed{seed} {arm} lr {lr:g}"
        if (root / TRAIN_DONE).is_file():
            self.done += 1
            return
        over = self._train_overrides(ft, k, s, seed, arm, lr)
        if over is None:  # dry run: the baseline's budget is not known yet
            self.todo.append(label + " (epochs: the baseline's)")
            return

        def action():
            seconds = bundle_run([self.configs / "train.json", *self.extra, *self.train_extra], root,
                                 p.set_path(k, s).parent, over, root / "train.log")
            record = {**train_record(root), "train_s": round(seconds, 1), "learning_rate": lr,
                      "epochs_max": over.get("epochs")}
            (root / TRAIN_DONE).write_text(json.dumps(record, indent=2) + "\n")

        self._step(label, False, action)

    def _choice_key(self, ft: str, k: int, arm: str) -> str:
        return f"{ft}/n{k}/{arm}"

    def _choose(self, ft: str, k: int, arm: str) -> float | None:
        p = self.p
        key = self._choice_key(ft, k, arm)
        if key in self.lr_choice:
            return self.lr_choice[key]
        if len(p.lr_grid) == 1:
            return self._record_choice(key, p.lr_grid[0])
        scores = {}
        for lr in p.lr_grid:
            recs = [_read_json(p.run_root(ft, k, s, seed, arm, lr) / TRAIN_DONE) for s, seed in p.tuning_pairs]
            if any(r is None for r in recs):
                return None
            scores[lr] = statistics.fmean(r["best_val_dice"] for r in recs)
        best = max(p.lr_grid, key=lambda lr: (scores[lr], -p.lr_grid.index(lr)))
        print(f"[{key}] learning rate {best:g} (mean best validation Dice over {len(p.tuning_pairs)} tuning pair(s): "
              + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in scores.items()) + ")", flush=True)
        return self._record_choice(key, best)

    def _record_choice(self, key: str, lr: float) -> float:
        self.lr_choice[key] = lr
        if not self.dry_run:
            (self.p.out / "lr_choice.json").write_text(json.dumps(self.lr_choice, indent=2) + "\n")
        return lr

    def _evaluate(self, ft: str, k: int, s: int, seed: int, arm: str, lr: float) -> None:
        p = self.p
        root = p.run_root(ft, k, s, seed, arm, lr)
        over = self._common(k, s)
        if p.s["family"] == "semi":
            over["mode"] = arm
        files = [self.configs / "inference.json", self.configs / "evaluate.json", *self.extra]
        self._step(f"test {ft} n{k} set{s} seed{seed} {arm} lr {lr:g}",
                   (root / "eval" / "metrics_summary.json").is_file(),
                   lambda: bundle_run(files, root, p.set_path(k, s).parent, over, root / "evaluate.log"))
        for name, values in self.variants.items():
            folder = root / f"eval_{name}"
            extra = {key: v.replace("{root}", str(root)) if isinstance(v, str) else v for key, v in values.items()}
            extra.update({"output_dir": str(folder / "predictions"), "metrics_dir": str(folder)})
            self._step(f"test ({name}) {ft} n{k} set{s} seed{seed} {arm} lr {lr:g}",
                       (folder / "metrics_summary.json").is_file(),
                       lambda extra=extra, name=name: bundle_run(files, root, p.set_path(k, s).parent,
                                                                 {**over, **extra}, root / f"evaluate_{name}.log"))

    def tune_and_train(self) -> None:
        p = self.p
        for k in p.label_counts:
            for ft in p.finetune:
                for arm in p.arms:
                    if len(p.lr_grid) > 1 and self._choice_key(ft, k, arm) not in self.lr_choice:
                        for s, seed in p.tuning_pairs:
                            for lr in p.lr_grid:
                                self._train(ft, k, s, seed, arm, lr)
                    self._choose(ft, k, arm)
            for s, seed in p.pairs:
                for ft in p.finetune:
                    for arm in p.arms:
                        lr = self.lr_choice.get(self._choice_key(ft, k, arm))
                        if lr is None:  # dry run before the tuning runs exist
                            self.todo.append(f"train + test {ft} n{k} set{s} seed{seed} {arm} at the chosen rate")
                            continue
                        self._train(ft, k, s, seed, arm, lr)
                        if (p.run_root(ft, k, s, seed, arm, lr) / TRAIN_DONE).is_file() or self.dry_run:
                            self._evaluate(ft, k, s, seed, arm, lr)

    def report(self) -> None:
        if self.dry_run:
            print(f"plan for {self.p.out}: {self.done} step(s) done, {len(self.todo)} to do")
            for line in self.todo:
                print("  " + line)


# --- summarize --------------------------------------------------------------------------------------------------------


def _case_dice(eval_dir: Path) -> dict[str, float]:
    """Per test case, the Dice averaged over the foreground classes (from ``metrics_per_case.csv``)."""
    path = eval_dir / "metrics_per_case.csv"
    if not path.is_file():
        return {}
    per: dict[str, list[float]] = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            if r.get("dice") not in (None, ""):
                per.setdefault(r["case"], []).append(float(r["dice"]))
    return {c: statistics.fmean(v) for c, v in per.items()}


def _pooled(summary: dict) -> float | None:
    """The Dice pooled over the 2D slices of the test role, foreground mean (``None`` in summaries without it)."""
    pooled = summary.get("mean_foreground", {}).get("pooled_slice_dice")
    return pooled["mean"] if isinstance(pooled, dict) else pooled


def set_level_interval(diffs: dict[tuple[int, int], float], level: float = 0.95) -> dict:
    """The interval with the labelled set as the unit: the paired differences of one set (its seeds share the
    labelled volumes, so they are not independent replicates) averaged first, then the t interval over the sets.

    Args:
        diffs: ``{(set, seed): difference}``.

    Returns:
        ``n_sets``, ``set_diff_mean`` and ``set_t_low``/``set_t_high`` (``nan`` with fewer than two sets).
    """
    per_set: dict[int, list[float]] = {}
    for (s, _), d in diffs.items():
        per_set.setdefault(s, []).append(d)
    means = [statistics.fmean(v) for _, v in sorted(per_set.items())]
    low, high = t_interval(means, level)
    return {"n_sets": len(means), "set_diff_mean": statistics.fmean(means) if means else float("nan"),
            "set_t_low": low, "set_t_high": high}


def collect_rows(output_dir: str) -> tuple[list[dict], dict, dict[tuple, dict[str, float]]]:
    """The finished runs of ``output_dir``: one row per (mode, count, set, seed, arm) at the chosen learning rate,
    the protocol, and each run's per-case Dice."""
    out = Path(output_dir).resolve()
    protocol = _read_json(out / "protocol.json")
    if protocol is None:
        raise SystemExit(f"no protocol.json in {out}: not a label-efficiency output folder")
    choice = _read_json(out / "lr_choice.json") or {}
    proto = Protocol(protocol["settings"], protocol["arms"], protocol["label_counts"], protocol["n_sets"],
                     protocol["seeds"], protocol["finetune"], out)
    rows, cases = [], {}
    for ft in proto.finetune:
        for k in proto.label_counts:
            for s, seed in proto.pairs:
                set_path = proto.set_path(k, s)
                n_volumes = len(json.loads(set_path.read_text())["training"]) if set_path.is_file() else None
                for arm in proto.arms:
                    lr = choice.get(f"{ft}/n{k}/{arm}")
                    if lr is None:
                        continue
                    root = proto.run_root(ft, k, s, seed, arm, lr)
                    summary = _read_json(root / "eval" / "metrics_summary.json")
                    record = _read_json(root / TRAIN_DONE)
                    if summary is None or record is None:
                        continue
                    row = {"family": protocol["settings"]["family"], "finetune": ft, "arm": arm, "label_count": k,
                           "labelled_volumes": n_volumes, "set": s, "seed": seed, "learning_rate": lr,
                           "n_test": summary["n_cases"]}
                    for column, key in MEAN_FG_METRICS:
                        row[column] = summary["mean_foreground"][key]["mean"]
                    row[POOLED_COLUMN] = _pooled(summary)
                    if len(summary["classes"]) > 1:
                        for stats in summary["classes"].values():
                            row[f"dice_{stats['name']}"] = stats["dice"]["mean"]
                    row.update({"best_val_dice": record["best_val_dice"], "best_epoch": record["best_epoch"],
                                "epochs_run": record["epochs_run"], "epochs_max": record.get("epochs_max"),
                                "train_s": record["train_s"],
                                "its_per_s": log_throughput(root / "train.log").get("its_per_s"),
                                "run_dir": str(root.relative_to(out))})
                    for name in protocol.get("eval_variants", {}):
                        extra = _read_json(root / f"eval_{name}" / "metrics_summary.json")
                        if extra is not None:
                            row[f"dice_mean_fg_{name}"] = extra["mean_foreground"]["dice"]["mean"]
                            row[f"{POOLED_COLUMN}_{name}"] = _pooled(extra)
                            cases[(ft, k, s, seed, arm, name)] = _case_dice(root / f"eval_{name}")
                    rows.append(row)
                    cases[(ft, k, s, seed, arm, "selected")] = _case_dice(root / "eval")
    return rows, protocol, cases


def paired_rows(rows: list[dict], protocol: dict, cases: dict, unit: str = "pairs", n_boot: int = 10000) -> list[dict]:
    """Per model (the one selected on validation, then each evaluation variant), fine-tuning mode, count and
    non-baseline arm: :func:`paired_stats.paired_summary` of the arm's test Dice against the baseline's over the
    pairs both finished."""
    baseline = protocol["arms"][0]
    out = []
    for model in ["selected", *protocol.get("eval_variants", {})]:
        metric = "dice_mean_fg" if model == "selected" else f"dice_mean_fg_{model}"
        pooled = POOLED_COLUMN if model == "selected" else f"{POOLED_COLUMN}_{model}"
        for ft in protocol["finetune"]:
            for k in protocol["label_counts"]:
                def runs_of(arm, ft=ft, k=k, metric=metric):
                    return {(r["set"], r["seed"]): r for r in rows if r["finetune"] == ft and r["label_count"] == k
                            and r["arm"] == arm and r.get(metric) is not None}

                base = runs_of(baseline)
                for arm in protocol["arms"][1:]:
                    mine = runs_of(arm)
                    pairs = sorted(set(base) & set(mine))
                    if not pairs:
                        continue
                    case_diffs = None
                    if unit == "pairs_and_cases":
                        per = {(q, a): cases[(ft, k, *q, a, model)] for q in pairs for a in (arm, baseline)}
                        names = sorted(set.intersection(*(set(v) for v in per.values())))
                        case_diffs = np.array([[per[(q, arm)][c] - per[(q, baseline)][c] for c in names]
                                               for q in pairs])
                    stats = paired_summary([mine[q][metric] for q in pairs], [base[q][metric] for q in pairs],
                                           case_diffs=case_diffs, unit=unit, n_boot=n_boot)
                    stats.update(set_level_interval({q: mine[q][metric] - base[q][metric] for q in pairs}))
                    both = [q for q in pairs if mine[q].get(pooled) is not None and base[q].get(pooled) is not None]
                    if both:  # the slice papers' metric next to ours, paired the same way
                        p2d = paired_summary([mine[q][pooled] for q in both], [base[q][pooled] for q in both],
                                             n_boot=n_boot)
                        stats.update({f"pooled_{key}": p2d[key] for key in ("n_pairs", "arm_mean", "baseline_mean",
                                                                             "diff_mean", "ci_low", "ci_high",
                                                                             "t_low", "t_high")})
                    volumes = [mine[q]["labelled_volumes"] for q in pairs if mine[q]["labelled_volumes"] is not None]
                    out.append({"model": model, "finetune": ft, "label_count": k,
                                "labelled_volumes": statistics.fmean(volumes) if volumes else None, "arm": arm,
                                "baseline": baseline, "metric": metric, "bootstrap_unit": unit,
                                "arm_lr": mine[pairs[0]]["learning_rate"],
                                "baseline_lr": base[pairs[0]]["learning_rate"], **stats})
    return out


def _fmt(v, spec=".4f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def summarize(output_dir: str, bootstrap_unit: str | None = None, n_boot: int = 10000) -> None:
    """Write ``runs.csv``, ``paired.csv``, ``paired.md`` and ``curve.png`` from the finished runs of
    ``output_dir`` (see the module docstring).

    Args:
        output_dir: the protocol's output folder.
        bootstrap_unit: ``pairs`` or ``pairs_and_cases`` (default: the one the protocol was run with).
        n_boot: bootstrap replicates.
    """
    out = Path(output_dir).resolve()
    rows, protocol, cases = collect_rows(output_dir)
    if not rows:
        raise SystemExit(f"no finished run under {out} yet")
    unit = bootstrap_unit or protocol.get("bootstrap_unit", "pairs")
    columns = list(dict.fromkeys(key for r in rows for key in r))
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    paired = paired_rows(rows, protocol, cases, unit=unit, n_boot=n_boot)
    if paired:
        with open(out / "paired.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for r in paired for key in r)))
            writer.writeheader()
            writer.writerows(paired)
    with_models = bool(protocol.get("eval_variants"))
    lines = [("| model " if with_models else "") + "| fine-tuning | labelled (groups / volumes) | arm (lr) | pairs | "
             "arm Dice | baseline Dice (lr) | difference | 95 % CI (bootstrap) | 95 % CI (t) | 95 % CI (t over sets) | "
             "sd | arm better | pooled 2D Dice, arm / baseline | pooled 2D difference [95 % CI bootstrap] |",
             "|---" * (14 + with_models) + "|"]
    for r in paired:
        pooled = (f"{_fmt(r.get('pooled_arm_mean'))} / {_fmt(r.get('pooled_baseline_mean'))} | "
                  f"{_fmt(r.get('pooled_diff_mean'), '+.4f')} [{_fmt(r.get('pooled_ci_low'), '+.4f')}, "
                  f"{_fmt(r.get('pooled_ci_high'), '+.4f')}]" if r.get("pooled_n_pairs") else " | ")
        lines.append(
            (f"| {r['model']} " if with_models else "")
            + f"| {r['finetune']} | {r['label_count']} / {_fmt(r['labelled_volumes'], '.0f')} | {r['arm']} "
            f"({r['arm_lr']:g}) | {r['n_pairs']} | {_fmt(r['arm_mean'])} | {_fmt(r['baseline_mean'])} "
            f"({r['baseline_lr']:g}) | {_fmt(r['diff_mean'], '+.4f')} | [{_fmt(r['ci_low'], '+.4f')}, "
            f"{_fmt(r['ci_high'], '+.4f')}] | [{_fmt(r['t_low'], '+.4f')}, {_fmt(r['t_high'], '+.4f')}] | "
            f"[{_fmt(r['set_t_low'], '+.4f')}, {_fmt(r['set_t_high'], '+.4f')}] ({r['n_sets']} sets) | "
            f"{_fmt(r['diff_sd'])} | {r['n_better']}/{r['n_pairs']} | {pooled} |")
    compute = sum(float(r["train_s"]) for r in rows)
    pretrain_s = sum((_read_json(p) or {}).get("pretrain", 0.0) for p in (out / "pretrain").glob("*/timing.json"))
    speed = []
    for root in sorted((out / "pretrain").glob("*/")):
        rate = log_throughput(root / "pretrain.log").get("its_per_s")
        if rate:
            speed.append(f"pretraining {root.name}: {rate:.2f} it/s")
    for arm in protocol["arms"]:
        rates = [r["its_per_s"] for r in rows if r["arm"] == arm and r.get("its_per_s")]
        if rates:
            speed.append(f"training {arm}: {statistics.median(rates):.2f} it/s (median over {len(rates)} runs)")
    text = "\n".join(lines)
    baseline = protocol["arms"][0]
    (out / "paired.md").write_text(
        text + f"\n\nTest Dice (per-volume 3D, mean over the foreground classes) of each arm minus the baseline "
        f"'{baseline}' on the same (labelled set, seed) pairs; the model of each run selected on validation Dice, its "
        f"learning rate chosen on validation. Bootstrap: {n_boot} resamples of "
        f"{'the pairs' if unit == 'pairs' else 'the pairs and, independently, the test cases'} (percentile "
        f"interval); t: the paired t interval; t over sets: the differences of each labelled set averaged over its "
        f"seeds, then the t interval over the sets (the unit to read when the seeds of a set share its labelled "
        f"volumes; empty with one set). Pooled 2D Dice: per class 2 sum|P n L| / (sum|P| + sum|L|) over all 2D "
        f"slices of the test role (the slice papers' metric), foreground mean, paired the same way. {len(rows)} runs, "
        f"training {compute / 3600:.2f} h"
        f"{f', pretraining {pretrain_s / 3600:.2f} h' if pretrain_s else ''} (wall clock).\n"
        + ("\nThroughput (iterations per second of the training loops, validation included): " + "; ".join(speed)
           + ".\n" if speed else ""))
    print(text)
    if speed:
        print("throughput: " + "; ".join(speed))
    plot_curve(rows, protocol, out / "curve.png", n_boot=min(n_boot, 2000))
    print(f"written: {out / 'runs.csv'}, {out / 'paired.md'}, {out / 'curve.png'}")
    if protocol["settings"].get("budget_epochs"):
        budget = budget_rows(paired, protocol, out)
        if budget:
            write_budget(budget, out)
            print(f"written: {out / 'budget.csv'}, {out / 'budget.md'}, {out / 'budget.png'}")


def budget_rows(paired: list[dict], protocol: dict, out: Path) -> list[dict]:
    """The paired rows of the budget-curve arms (model selected on validation), each with its pretraining method,
    epochs and iterations (epochs x the pretraining's iterations per epoch, read from its log; ``None`` when the log
    does not say)."""
    proto = Protocol(protocol["settings"], protocol["arms"], protocol["label_counts"], protocol["n_sets"],
                     protocol["seeds"], protocol["finetune"], out)
    result = []
    for r in paired:
        method, epochs = split_arm(r["arm"])
        if r["model"] != "selected" or epochs is None:
            continue
        per_epoch = log_throughput(proto.pretrain_root(method, proto.pretrain_seed(proto.seeds[0])) / "pretrain.log")
        its = per_epoch.get("iterations_per_epoch")
        result.append({"method": method, "pretrain_epochs": epochs,
                       "pretrain_iterations": epochs * its if its else None, **r})
    return sorted(result, key=lambda r: (r["finetune"], r["label_count"], r["method"], r["pretrain_epochs"]))


def widest_interval(row: dict) -> tuple[float, float]:
    """The envelope of a paired row's bootstrap, paired t and set-level t 95 % intervals (those defined)."""
    lows = [row.get(k) for k in ("ci_low", "t_low", "set_t_low")]
    highs = [row.get(k) for k in ("ci_high", "t_high", "set_t_high")]
    lows = [v for v in lows if v is not None and not math.isnan(v)]
    highs = [v for v in highs if v is not None and not math.isnan(v)]
    return (min(lows) if lows else float("nan"), max(highs) if highs else float("nan"))


def write_budget(budget: list[dict], out: Path) -> None:
    """``budget.csv``, ``budget.md`` and ``budget.png``: the paired gain over random init against pretraining
    iterations, one line per (method, fine-tuning mode), one panel per label count; the error bars are the widest of
    the three 95 % intervals of the table (:func:`widest_interval`), so that no point looks better than its most
    conservative interval allows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "budget.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for r in budget for key in r)))
        writer.writeheader()
        writer.writerows(budget)
    lines = ["| method | fine-tuning | labelled (groups) | pretraining epochs | pretraining iterations | pairs | "
             "difference | 95 % CI (bootstrap) | 95 % CI (t) | 95 % CI (t over sets) | arm better | "
             "pooled 2D difference |", "|---" * 12 + "|"]
    for r in budget:
        its = "" if r["pretrain_iterations"] is None else str(r["pretrain_iterations"])
        lines.append(f"| {r['method']} | {r['finetune']} | {r['label_count']} | {r['pretrain_epochs']} | {its} | "
                     f"{r['n_pairs']} | {_fmt(r['diff_mean'], '+.4f')} | [{_fmt(r['ci_low'], '+.4f')}, "
                     f"{_fmt(r['ci_high'], '+.4f')}] | [{_fmt(r['t_low'], '+.4f')}, {_fmt(r['t_high'], '+.4f')}] | "
                     f"[{_fmt(r['set_t_low'], '+.4f')}, {_fmt(r['set_t_high'], '+.4f')}] | "
                     f"{r['n_better']}/{r['n_pairs']} | {_fmt(r.get('pooled_diff_mean'), '+.4f')} |")
    (out / "budget.md").write_text(
        "\n".join(lines) + "\n\nPaired gain in test Dice (per-volume 3D, foreground mean) of fine-tuning from the "
        "encoder kept after each number of pretraining epochs, minus random init on the same (labelled set, seed) "
        "pairs. The snapshots come from one pretraining run per method (the schedule of its longest budget), so the "
        "smaller budgets are points along that run, not runs of their own. budget.png: the mean difference with the "
        "widest of the three intervals.\n")
    counts = sorted({r["label_count"] for r in budget})
    use_its = all(r["pretrain_iterations"] for r in budget)
    fig, axes = plt.subplots(1, len(counts), figsize=(4.6 * len(counts), 3.6), squeeze=False)
    for ax, k in zip(axes[0], counts):
        lines_of = sorted({(r["method"], r["finetune"]) for r in budget if r["label_count"] == k})
        for i, (method, ft) in enumerate(lines_of):
            sub = [r for r in budget if r["label_count"] == k and r["method"] == method and r["finetune"] == ft]
            # the lines side by side around each budget, so that overlapping intervals stay visible
            xs = [(r["pretrain_iterations"] if use_its else r["pretrain_epochs"])
                  * 2 ** (0.03 * (i - (len(lines_of) - 1) / 2)) for r in sub]
            ys = [r["diff_mean"] for r in sub]
            bounds = [widest_interval(r) for r in sub]
            yerr = [[y - lo for y, (lo, _) in zip(ys, bounds)], [hi - y for y, (_, hi) in zip(ys, bounds)]]
            ax.errorbar(xs, ys, yerr=yerr, fmt="o-" if ft == "full" else "s--", color=f"C{i}", capsize=3,
                        label=f"{method}, {ft}")
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("pretraining iterations" if use_its else "pretraining epochs")
        ax.set_ylabel("test Dice minus random init")
        ax.set_title(f"{k} labelled group(s)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "budget.png", dpi=120)
    plt.close(fig)


def plot_curve(rows: list[dict], protocol: dict, path: Path, metric: str = "dice_mean_fg", n_boot: int = 2000) -> None:
    """Test Dice against labelled volumes, one line per arm with its 95 % bootstrap interval (pairs resampled) as
    error bars and a band, the arms drawn slightly apart around each count; one panel per fine-tuning mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in protocol["finetune"] if any(r["finetune"] == m for r in rows)]
    n_arms = len(protocol["arms"])
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.4), squeeze=False)
    for ax, ft in zip(axes[0], modes):
        for i, arm in enumerate(protocol["arms"]):
            xs, mean, low, high = [], [], [], []
            for k in protocol["label_counts"]:
                sub = [r for r in rows if r["finetune"] == ft and r["arm"] == arm and r["label_count"] == k]
                if not sub:
                    continue
                values = [r[metric] for r in sub]
                volumes = [r["labelled_volumes"] for r in sub if r["labelled_volumes"] is not None]
                xs.append(statistics.fmean(volumes) if volumes else k)
                mean.append(statistics.fmean(values))
                lo, hi = bootstrap_mean_ci(values, n_boot=n_boot)
                low.append(lo)
                high.append(hi)
            if not xs:
                continue
            color = f"C{i}"
            # arms side by side around each count (a small step on the log axis), so that overlapping intervals stay
            # visible; the error bar shows the interval also where a count has no neighbour to draw a band to
            xs = [x * 2 ** (0.04 * (i - (n_arms - 1) / 2)) for x in xs]
            yerr = [[m - lo for m, lo in zip(mean, low)], [hi - m for m, hi in zip(mean, high)]]
            ax.errorbar(xs, mean, yerr=yerr, fmt="o-", color=color, capsize=3, label=arm)
            ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0)
        ax.set_title(f"{ft} fine-tuning" if protocol["settings"]["family"] == "slice" else "training")
        ax.set_xlabel("labelled volumes")
        ax.set_ylabel("test Dice (foreground mean)")
        ax.set_xscale("log", base=2)
        ticks = sorted({r["labelled_volumes"] or r["label_count"] for r in rows if r["finetune"] == ft})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        if len(ticks) == 1:  # one count: keep the arms close together, as they would be with more counts
            ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- data ---------------------------------------------------------------------------------------------------------------


def crop(datalist: str, output_dir: str, size=None, roles=None) -> None:
    """Write an in-plane centre crop (zero-padded where smaller) of every case of ``datalist`` and its datalist.

    Each image and label is cropped to ``size`` (x, y) about the in-plane centre of the volume (the slice axis z is
    kept); the affine's origin moves with the crop, so the spacing and the world position of every voxel are kept.
    For a CPU-sized ACDC (``--size "[96,96]"``: 150 mm at 1.5625 mm, the heart near the centre of the field of view).

    Args:
        datalist: the datalist to crop (NIfTI cases).
        output_dir: where ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` go.
        size: in-plane size ``[x, y]`` (default ``[96, 96]``).
        roles: the roles to keep (default: all four).
    """
    from volssl.data.datalist import ROLES, case_id, load_datalist, save_datalist
    from volssl.io import load_nifti, save_nifti

    size = [int(v) for v in parse_literal(size, [96, 96])]
    roles = list(parse_literal(roles, ROLES))
    base = load_datalist(datalist, require=())
    out = Path(output_dir).resolve()
    result = {k: v for k, v in base.items() if k not in (*ROLES, "dataset_dir") and not k.startswith("_")}
    for role in roles:
        result[role] = []
        for entry in _absolute(base, role):
            new = {}
            for key, folder in (("image", "imagesTr"), ("label", "labelsTr")):
                if key not in entry:
                    continue
                target = out / folder / Path(entry[key]).name
                new[key] = f"{folder}/{target.name}"
                if target.is_file():
                    continue
                array, affine = load_nifti(entry[key])
                cropped, shift = _centre_crop(array, size)
                moved = affine.copy()
                moved[:3, 3] = affine[:3, 3] + affine[:3, :2] @ np.asarray(shift, dtype=np.float64)
                save_nifti(cropped, moved, target)
            result[role].append(new)
        print(f"{role}: {len(result[role])} cases ({', '.join(case_id(e['image']) for e in result[role][:3])}...)")
    save_datalist(result, out / "datalist.json")
    print(f"wrote {out / 'datalist.json'}")


def _centre_crop(array: np.ndarray, size: list[int]) -> tuple[np.ndarray, list[int]]:
    """Centre crop (or zero-pad) the first two axes to ``size``; returns the array and the index of the new
    origin in the old grid (negative where padded)."""
    out = array
    shift = []
    for axis, target in enumerate(size):
        n = out.shape[axis]
        start = (n - target) // 2
        if start >= 0:
            out = np.take(out, range(start, start + target), axis=axis)
        else:
            pad = [(0, 0)] * out.ndim
            pad[axis] = (-start, target - n + start)
            out = np.pad(out, pad)
        shift.append(start)
    return np.ascontiguousarray(out), shift


def compare(baseline_dir: str, other_dir: str, baseline_name: str = "baseline", other_name: str = "other",
            output: str | None = None, n_boot: int = 10000) -> list[dict]:
    """Two protocol folders run with the same arms, labelled sets and seeds but another recipe (e.g. the previous
    data path in fp32 against the batched one in bf16): per (fine-tuning mode, count, arm), the paired difference
    ``other - baseline`` of the test Dice over the (set, seed) pairs both finished, with the bootstrap and paired t
    95 % intervals; a Markdown table printed (and written to ``output``).
    """
    rows_a, _, _ = collect_rows(baseline_dir)
    rows_b, _, _ = collect_rows(other_dir)

    def index(rows):
        return {(r["finetune"], r["label_count"], r["arm"], r["set"], r["seed"]): r for r in rows}

    a, b = index(rows_a), index(rows_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit(f"no (mode, count, arm, set, seed) finished in both {baseline_dir} and {other_dir}")
    out = []
    for group in sorted({q[:3] for q in common}):
        keys = [q for q in common if q[:3] == group]
        stats = paired_summary([b[q]["dice_mean_fg"] for q in keys], [a[q]["dice_mean_fg"] for q in keys],
                               n_boot=n_boot)
        per_pair = ", ".join(f"{a[q]['dice_mean_fg']:.3f}/{b[q]['dice_mean_fg']:.3f}" for q in keys)
        speed = [(a[q].get("its_per_s"), b[q].get("its_per_s")) for q in keys]
        ratio = [y / x for x, y in speed if x and y]
        pooled = [(a[q].get(POOLED_COLUMN), b[q].get(POOLED_COLUMN)) for q in keys]
        pooled = [(x, y) for x, y in pooled if x is not None and y is not None]
        out.append({"finetune": group[0], "label_count": group[1], "arm": group[2], "pairs": per_pair,
                    "pooled_baseline": statistics.fmean(x for x, _ in pooled) if pooled else None,
                    "pooled_other": statistics.fmean(y for _, y in pooled) if pooled else None,
                    "train_s_baseline": sum(a[q]["train_s"] for q in keys),
                    "train_s_other": sum(b[q]["train_s"] for q in keys),
                    "its_ratio": statistics.fmean(ratio) if ratio else None, **stats})
    lines = [f"| mode | count | arm | test Dice per pair ({baseline_name}/{other_name}) | {baseline_name} | "
             f"{other_name} | {other_name} - {baseline_name} | 95 % CI (bootstrap) | 95 % CI (paired t) | "
             f"training s ({baseline_name} / {other_name}) | pooled 2D Dice ({baseline_name} / {other_name}) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out:
        lines.append(f"| {r['finetune']} | {r['label_count']} | {r['arm']} | {r['pairs']} | {r['baseline_mean']:.4f} | "
                     f"{r['arm_mean']:.4f} | {r['diff_mean']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | "
                     f"[{r['t_low']:+.4f}, {r['t_high']:+.4f}] | {r['train_s_baseline']:.0f} / "
                     f"{r['train_s_other']:.0f} | {_fmt(r['pooled_baseline'])} / {_fmt(r['pooled_other'])} |")
    text = "\n".join(lines)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
    return out


if __name__ == "__main__":
    fire.Fire({"run": run, "summarize": summarize, "compare": compare, "crop": crop}, serialize=lambda _: None)
