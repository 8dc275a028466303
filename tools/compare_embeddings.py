"""Pretrain several arms (bundles and config overrides) on one datalist and probe their encoders' slice embeddings.

    python tools/compare_embeddings.py run --datalist data/phantom/datalist.json --output_dir runs/sal_ablation \\
        --arms sal_ablation
    python tools/compare_embeddings.py run --datalist runs/hippocampus/datalist.json --output_dir runs/probe_arms \\
        --arms pretraining

Every arm is a ``python -m monai.bundle run`` of its bundle's ``pretrain.json`` + ``overlay`` (default
``cpu_small.json``) + the arm's overrides, in ``<output_dir>/<arm>/`` (its bundle root), followed by
``tools/probe_embeddings.py`` on the ``role`` volumes (default ``test``) into ``<output_dir>/<arm>/probe/``. The
``random`` arm is the same encoder at random initialisation (probe only). Steps whose output exists are skipped, so an
interrupted comparison continues where it stopped. ``summarize`` writes ``results.csv`` and ``results.md``: the four
diagnostics of :mod:`volssl.metrics.embeddings`, ``std_ratio`` (``channel_std`` over the random arm's: the
acceptance rule of the SAL reconstruction is ``>= 0.5``), the last pretraining epoch's loss terms from
``logs/pretrain/pretrain_curve.csv`` and the pretraining wall-clock seconds.

Presets for ``--arms``:

- ``sal_ablation``: :data:`SAL_ABLATION`, the SAL reconstruction's defaults and each choice switched off (see the SAL
  bundle's model card);
- ``pretraining``: random init, CORAL and SAL at their defaults;
- several presets joined by commas, e.g. ``sal_ablation,pretraining`` (the arms of all, each once).

Or a dict ``{name: {"bundle": folder, "overrides": {...}}}``; ``{"bundle": null}`` is a random-init arm.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import fire

try:
    from comparison_common import REPO_ROOT, bundle_run, overlay_files, parse_literal
except ImportError:  # imported from elsewhere rather than run as `python tools/compare_embeddings.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comparison_common import REPO_ROOT, bundle_run, overlay_files, parse_literal

SAL = "bundles/sal_mri_segmentation"
CORAL = "bundles/coral_mri_segmentation"

SAL_ABLATION: dict[str, dict] = {
    "random": {"bundle": None},
    "sal_default": {"bundle": SAL, "overrides": {}},
    # LA on the bottleneck (4 x 4 at a 64 x 64 patch) instead of a level whose windows hold structure
    "la_bottleneck": {"bundle": SAL, "overrides": {"alignment_level": -1}},
    # each slice of a pair augmented with its own draw (windows of the two slices no longer face each other)
    "independent_aug": {"bundle": SAL, "overrides": {"pair_augmentation": "independent"}},
    # GP as the standardised MSE on the within-volume offset (no cross-subject term), from level 3 as before
    "gp_relative": {"bundle": SAL, "overrides": {"position_mode": "relative", "position_level": -2}},
    # the same with the raw offset as target (mean square about 0.004 at t = 0.1)
    "gp_relative_raw": {
        "bundle": SAL,
        "overrides": {"position_mode": "relative", "position_level": -2, "gp_standardize": False},
    },
    # GP as the standardised MSE on each slice's own position, from level 3
    "gp_absolute": {"bundle": SAL, "overrides": {"position_mode": "absolute", "position_level": -2}},
    # one term only
    "la_only": {"bundle": SAL, "overrides": {"gp_weight": 0.0}},
    "gp_only": {"bundle": SAL, "overrides": {"la_weight": 0.0}},
    # CORAL's learning rate
    "lr_0.1": {"bundle": SAL, "overrides": {"pretrain_learning_rate": 0.1}},
    # the first reconstruction: bottleneck LA, raw offset MSE from level 3, independent augmentation, lr 0.1
    "earlier_reconstruction": {
        "bundle": SAL,
        "overrides": {
            "alignment_level": -1,
            "pair_augmentation": "independent",
            "position_mode": "relative",
            "position_level": -2,
            "gp_standardize": False,
            "pretrain_learning_rate": 0.1,
        },
    },
}

PRETRAINING: dict[str, dict] = {
    "random": {"bundle": None},
    "coral": {"bundle": CORAL, "overrides": {}},
    "sal_default": {"bundle": SAL, "overrides": {}},
}

PRESETS = {"sal_ablation": SAL_ABLATION, "pretraining": PRETRAINING}
PROBE_KEYS = ("position_r2", "nn_position_error", "cosine_mean", "channel_std")
CURVE_KEYS = ("train_loss", "train_la", "train_gp", "train_la_cosine", "train_ral", "train_oal")


def _arms(arms) -> dict[str, dict]:
    # fire turns "a,b" into a tuple
    names = [a.strip() for a in arms.split(",")] if isinstance(arms, str) else []
    if isinstance(arms, (list, tuple)) and all(isinstance(a, str) for a in arms):
        names = [a.strip() for a in arms]
    if names and all(n in PRESETS for n in names):
        merged: dict[str, dict] = {}
        for n in names:  # arms of the same name are the same arm (random, sal_default)
            merged.update(PRESETS[n])
        return merged
    parsed = parse_literal(arms, SAL_ABLATION)
    if not isinstance(parsed, dict):
        raise SystemExit(f"--arms must be one of {sorted(PRESETS)} or a dict, got {arms!r}")
    return parsed


def run(
    datalist: str,
    output_dir: str,
    arms="sal_ablation",
    overlay="cpu_small.json",
    overrides=None,
    role: str = "test",
    seed: int = 0,
    probe_bundle: str = SAL,
) -> None:
    """Pretrain and probe every arm, then summarise.

    Args:
        datalist: the datalist (pretraining reads ``training`` + ``unlabeled``; the probe reads ``role``).
        output_dir: where every bundle root, log, probe and the results go.
        arms: a preset name (``sal_ablation``, ``pretraining``, or several joined by commas) or ``{name: {"bundle":
            ..., "overrides": {...}}}``.
        overlay: config file name(s) in each bundle's ``configs/`` merged after ``pretrain.json`` (and given to the
            probe), in order; ``None``: none.
        overrides: config values for every arm (e.g. ``{'pretrain_epochs': 4}``), before the arm's own.
        role: the datalist role probed.
        seed: the pretraining seed (and the random arm's initialisation seed).
        probe_bundle: the bundle whose config defines the random arm's encoder.
    """
    arm_specs = _arms(arms)
    overrides = parse_literal(overrides, {})
    out = Path(output_dir).resolve()
    datalist = Path(datalist).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps({
        "datalist": str(datalist), "arms": arm_specs, "overlay": overlay, "overrides": overrides, "role": role,
        "seed": seed,
    }, indent=2))
    for name, spec in arm_specs.items():
        bundle = spec.get("bundle")
        root = out / name
        if bundle is not None:
            configs = REPO_ROOT / bundle / "configs"
            ckpt = root / "models" / "pretrain.pt"
            if ckpt.is_file():
                print(f"[{name}] pretraining done earlier: {ckpt}")
            else:
                print(f"[{name}] pretraining ({bundle}, {spec.get('overrides', {})})")
                # an arm's own values win (its own seed too); the datalist is the comparison's
                values = {**overrides, "seed": seed, **spec.get("overrides", {}), "datalist": str(datalist)}
                seconds = bundle_run([configs / "pretrain.json", *overlay_files(configs, overlay)], root,
                                     datalist.parent, values, root / "pretrain.log")
                (root / "timing.json").write_text(json.dumps({"pretrain": round(seconds, 1)}))
        probe_dir = root / "probe"
        if (probe_dir / "embeddings.json").is_file():
            print(f"[{name}] probe done earlier: {probe_dir / 'embeddings.json'}")
            continue
        cmd = [sys.executable, str(REPO_ROOT / "tools" / "probe_embeddings.py"), "--bundle",
               str(REPO_ROOT / (bundle or probe_bundle)), "--datalist", str(datalist), "--role", role,
               "--output_dir", str(probe_dir), "--seed", str(seed)]
        if bundle is not None:  # a pretrained arm: the probe reads the network values from the run's record
            cmd += ["--run_dir", str(root)]
        else:  # random initialisation: the comparison's overlay and shared values define the network
            if overlay:
                cmd += ["--overlay", overlay if isinstance(overlay, str) else ",".join(overlay)]
            shared = {k: v for k, v in overrides.items() if k in ("features", "in_channels", "patch_size")}
            if shared:
                cmd += ["--overrides", repr(shared)]
        print(f"[{name}] probe: $ {' '.join(cmd[1:])}", flush=True)
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"probe of {name} failed:\n{proc.stderr[-3000:]}")
        print(f"    {proc.stdout.strip()} ({time.time() - start:.0f} s)", flush=True)
    summarize(output_dir, list(arm_specs))


def _last_curve_row(root: Path) -> dict:
    path = root / "logs" / "pretrain" / "pretrain_curve.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss")]
    return {k: float(v) for k, v in rows[-1].items() if k in CURVE_KEYS and v != ""} if rows else {}


def summarize(output_dir: str, arm_order=None) -> None:
    """Collect ``<arm>/probe/embeddings.json`` (+ the curves and timings) into ``results.csv`` and ``results.md``."""
    out = Path(output_dir)
    protocol = json.loads((out / "protocol.json").read_text()) if (out / "protocol.json").is_file() else {}
    specs = protocol.get("arms", {})
    found = [p.parents[1].name for p in sorted(out.glob("*/probe/embeddings.json"))]
    arms = [a for a in (arm_order or []) if a in found] + [a for a in found if a not in (arm_order or [])]
    if not arms:
        raise SystemExit(f"no probed arm under {out} (no */probe/embeddings.json)")
    rows = []
    for arm in arms:
        probe = json.loads((out / arm / "probe" / "embeddings.json").read_text())
        spec = specs.get(arm, {})
        row = {"arm": arm, "overrides": json.dumps(spec.get("overrides", {})) if spec.get("bundle") else "random init"}
        row.update({k: probe[k] for k in PROBE_KEYS})
        row["n_volumes"], row["n_slices"] = probe["n_volumes"], probe["n_slices"]
        row.update(_last_curve_row(out / arm))
        timing = out / arm / "timing.json"
        if timing.is_file():
            row["pretrain_s"] = json.loads(timing.read_text()).get("pretrain")
        rows.append(row)
    random_std = next((r["channel_std"] for r in rows if r["overrides"] == "random init"), None)
    for r in rows:
        r["std_ratio"] = r["channel_std"] / random_std if random_std else None
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = ["position_r2", "nn_position_error", "cosine_mean", "channel_std", "std_ratio", "train_la", "train_gp",
             "train_la_cosine", "pretrain_s"]
    shown = [c for c in shown if c in columns]
    lines = ["| arm | " + " | ".join(shown) + " | overrides |", "|---" * (len(shown) + 2) + "|"]
    for r in rows:
        cells = []
        for c in shown:
            v = r.get(c)
            cells.append("" if v is None else f"{v:.0f}" if c == "pretrain_s" else f"{v:.4g}")
        lines.append(f"| {r['arm']} | " + " | ".join(cells) + f" | {r['overrides']} |")
    text = "\n".join(lines)
    (out / "results.md").write_text(
        text + f"\n\nProbe of the '{protocol.get('role', 'test')}' volumes of {protocol.get('datalist', '?')} "
        "(tools/probe_embeddings.py); std_ratio: channel_std over the random arm's; train_*: the last pretraining "
        "epoch's mean loss terms; pretrain_s: pretraining wall-clock seconds.\n")
    print(text)


if __name__ == "__main__":
    fire.Fire({"run": run, "summarize": summarize})
