"""The comparison tools: the summary statistics over seeds, and a tiny end-to-end run of the semi-supervised
comparison (two modes, one seed) through the bundle commands, including the skip of finished runs."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle_helpers import REPO_ROOT, make_tiny_dataset

sys.path.insert(0, str(REPO_ROOT / "tools"))
import comparison_common  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace|trace_method|interface)` is deprecated")

TOOL = REPO_ROOT / "tools" / "compare_semisupervised.py"


def _fake_run(root: Path, arm: str, seed: int, dice: float, hd95: float, best_val: float, pooled=None) -> None:
    run_root = root / arm / f"seed{seed}"
    (run_root / "eval").mkdir(parents=True)
    stat = lambda v: {"mean": v, "std": 0.0, "n": 2}  # noqa: E731
    summary = {
        "n_cases": 2,
        "classes": {"1": {"name": "atrium", "dice": stat(dice)}},
        "mean_foreground": {"dice": stat(dice), "jaccard": stat(dice / (2 - dice)), "hd95_mm": stat(hd95),
                            "asd_mm": stat(hd95 / 4), "hd95_vox": stat(hd95 / 2), "asd_vox": stat(hd95 / 8)},
    }
    if pooled is not None:  # written by volssl.metrics.summarize as one number for the foreground mean
        summary["mean_foreground"]["pooled_slice_dice"] = pooled
    (run_root / "eval" / "metrics_summary.json").write_text(json.dumps(summary))
    (run_root / "train.log").write_text(f"x - volssl.best_model - INFO - epoch 3: best val_mean_dice {best_val:.4f}, "
                                        "saved m.pt\n")
    comparison_common.record_seconds(run_root, "train", 100.0 + seed)


def test_summarize_mean_and_std_over_seeds(tmp_path):
    for seed, dice in enumerate([0.5, 0.7]):
        _fake_run(tmp_path, "crln", seed, dice, hd95=10.0 + seed, best_val=dice - 0.1, pooled=dice + 0.1)
    _fake_run(tmp_path, "supervised", 0, 0.4, hd95=20.0, best_val=0.3)  # an older summary: no pooled 2D Dice
    comparison_common.summarize(str(tmp_path), arm_order=["supervised", "crln"])

    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["arm"], r["seed"]) for r in rows] == [("crln", "0"), ("crln", "1"), ("supervised", "0")]
    assert "dice_atrium" not in rows[0]  # one foreground class: its Dice is the foreground mean, not repeated
    assert float(rows[1]["train_s"]) == 101.0 and float(rows[0]["best_val_dice"]) == pytest.approx(0.4)
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[2].startswith("| supervised | 0 |")  # the requested arm order, not alphabetical
    crln = table[3]
    std = statistics.stdev([0.5, 0.7])
    assert f"0.6000 +- {std:.4f}" in crln and f"10.5000 +- {statistics.stdev([10.0, 11.0]):.4f}" in crln
    header = [c.strip() for c in table[0].split("|")]
    pooled = header.index("pooled_dice_2d_mean_fg")
    assert header[pooled - 1] == "asd_vox_mean_fg"  # next to the 3D metrics
    assert crln.split("|")[pooled].strip() == f"0.7000 +- {std:.4f}"
    assert table[2].split("|")[pooled].strip() == "-"
    assert rows[2]["pooled_dice_2d_mean_fg"] == "" and float(rows[0]["pooled_dice_2d_mean_fg"]) == pytest.approx(0.6)
    assert (tmp_path / "results.png").stat().st_size > 0


def test_summarize_without_runs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no finished run"):
        comparison_common.summarize(str(tmp_path))


def test_overlay_files_in_order_and_missing_named(tmp_path):
    from comparison_common import overlay_files

    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("{}")
    assert overlay_files(tmp_path, None) == [] and overlay_files(tmp_path, "") == []
    assert overlay_files(tmp_path, "b.json,a.json") == [tmp_path / "b.json", tmp_path / "a.json"]
    assert overlay_files(tmp_path, ("a.json",)) == [tmp_path / "a.json"]
    with pytest.raises(SystemExit, match="c.json"):
        overlay_files(tmp_path, "a.json, c.json")


# slow: 45-80 s, and tools/label_efficiency.py --family semi (tested end to end in the default suite) supersedes this tool
@pytest.mark.slow
def test_compare_semisupervised_end_to_end(tmp_path):
    datalist = make_tiny_dataset(tmp_path / "data", n=6, n_labeled=2, n_val=1, n_test=1)
    tiny = {"n_filters": 4, "num_prototypes": 4, "num_classes": 4, "patch_size": [32, 32, 16], "epochs": 1,
            "iterations_per_epoch": 2, "rectify_after_iterations": 0, "num_anchors": 16, "num_negatives": 32,
            "num_workers": 0, "val_overlap": 0.0, "overlap": 0.0}
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(TOOL), "run", "--datalist", str(datalist), "--output_dir", str(out),
           "--modes", "['supervised','crln']", "--seeds", "[0]", "--overlay", "None", "--overrides", repr(tiny)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["arm"] for r in rows) == ["crln", "supervised"]
    for r in rows:
        for column in ("dice_mean_fg", "jaccard_mean_fg", "hd95_mm_mean_fg", "asd_mm_mean_fg", "hd95_vox_mean_fg",
                       "pooled_dice_2d_mean_fg", "train_s"):
            assert r[column] != ""
    assert (out / "crln" / "seed0" / "eval" / "predictions").is_dir()
    last = list(csv.DictReader(open(out / "results_last.csv")))  # the last models, scored the same way
    assert sorted(r["arm"] for r in last) == ["crln", "supervised"]
    state = torch.load(out / "crln" / "seed0" / "models" / "model_last.pt", weights_only=True)
    assert "a" in state and all(isinstance(v, torch.Tensor) for v in state.values())  # plain state dict of CRLNNet
    # the last model is the EMA teacher of the last checkpoint (what the bundle ships), not the student
    ckpt = torch.load(out / "crln" / "seed0" / "models" / "train_checkpoints" / "checkpoint_epoch=1.pt",
                      weights_only=True)
    assert all(torch.equal(v, ckpt["step"]["teacher"][k]) for k, v in state.items())
    assert any(not torch.equal(v, ckpt["network"][k]) for k, v in state.items() if v.is_floating_point())
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["modes"] == ["supervised", "crln"] and protocol["overrides"]["epochs"] == 1

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done earlier") == 2 and "last model" not in again.stdout


def test_compare_semisupervised_rejects_unknown_mode(tmp_path):
    proc = subprocess.run([sys.executable, str(TOOL), "run", "--datalist", str(tmp_path / "d.json"), "--output_dir",
                           str(tmp_path), "--modes", "['fixmatch']"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown mode" in (proc.stdout + proc.stderr)
