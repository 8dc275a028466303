"""The label-efficiency tool: the paired statistics on numbers with a known answer, the labelled-set draws, the
centre crop, the plan of a dry run, and the small phantom protocol end to end (CSV, paired table with CIs, curve PNG,
learning-rate choice on validation, resume of an interrupted run, skip of finished steps)."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import REPO_ROOT, make_tiny_dataset

sys.path.insert(0, str(REPO_ROOT / "tools"))
import label_efficiency
import paired_stats

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace|trace_method|interface)` is deprecated")

TOOL = REPO_ROOT / "tools" / "label_efficiency.py"
TINY = {"features": 4, "patch_size": [32, 32], "num_workers": 0, "pretrain_batch_size": 8, "pretrain_epochs": 1,
        "batch_size": 8, "epochs": 3, "sw_batch_size": 8}


# --- statistics ---------------------------------------------------------------------------------------------------


def test_constant_difference_has_a_zero_width_interval():
    base = [0.2, 0.5, 0.9, 0.4]
    out = paired_stats.paired_summary([b + 0.1 for b in base], base)
    assert out["diff_mean"] == pytest.approx(0.1)
    assert out["ci_low"] == pytest.approx(0.1) and out["ci_high"] == pytest.approx(0.1)
    assert out["diff_sd"] == pytest.approx(0.0, abs=1e-12) and out["n_better"] == 4 and out["n_pairs"] == 4


def test_pairing_removes_the_spread_between_pairs():
    # the pairs differ a lot (sd 0.2) but the arm is the baseline + 0.05 +- 0.01: a paired CI sees the +0.05
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=30)
    arm = base + 0.05 + rng.normal(0, 0.01, size=30)
    out = paired_stats.paired_summary(arm, base)
    assert 0.0 < out["ci_low"] < 0.05 < out["ci_high"] < 0.06
    unpaired = paired_stats.bootstrap_mean_ci(arm, seed=1)[0] - paired_stats.bootstrap_mean_ci(base, seed=2)[1]
    assert unpaired < 0  # comparing the two means' intervals would not separate them


def test_bootstrap_interval_matches_the_normal_theory_for_many_pairs():
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 0.2, size=400)
    low, high = paired_stats.bootstrap_mean_ci(d, n_boot=20000)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_t_interval_known_value():
    low, high = paired_stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * statistics.stdev([1, 2, 3, 4, 5]) / math.sqrt(5)  # t_{0.975, 4}
    assert (low, high) == (pytest.approx(3 - half), pytest.approx(3 + half))


def test_two_way_bootstrap_covers_the_test_cases():
    # identical pairs (no spread between labelled sets/seeds) but the cases disagree: only the two-way interval is wide
    cases = np.array([0.3, -0.1, 0.2, -0.2, 0.1, 0.0, 0.25, -0.05])
    diffs = np.tile(cases, (6, 1))
    pairs_only = paired_stats.paired_summary(diffs.mean(axis=1), np.zeros(6))
    two_way = paired_stats.paired_summary(diffs.mean(axis=1), np.zeros(6), case_diffs=diffs, unit="pairs_and_cases")
    assert pairs_only["ci_high"] - pairs_only["ci_low"] == pytest.approx(0.0, abs=1e-12)
    assert two_way["ci_low"] < cases.mean() < two_way["ci_high"]
    assert two_way["ci_high"] - two_way["ci_low"] > 0.1
    assert paired_stats.two_way_bootstrap_ci(np.full((3, 4), 0.2)) == (pytest.approx(0.2), pytest.approx(0.2))
    with pytest.raises(ValueError, match="pairs_and_cases"):
        paired_stats.paired_summary([1.0], [0.0], unit="pairs_and_cases")


# --- labelled sets, crop --------------------------------------------------------------------------------------------


def _datalist(tmp_path: Path, names: list[str]) -> Path:
    for name in names:
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    entry = lambda n: {"image": f"{n}.nii.gz", "label": f"{n}.nii.gz"}
    data = {"labels": {"0": "background", "1": "x"}, "training": [entry(n) for n in names[:-2]],
            "unlabeled": [], "validation": [entry(names[-2])], "test": [entry(names[-1])]}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    return path


def test_labelled_sets_are_nested_grouped_and_the_rest_unlabelled(tmp_path):
    names = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 9) for f in (1, 2)] + ["val_a", "test_a"]
    path = _datalist(tmp_path, names)
    sets = label_efficiency.draw_labelled_sets(path, [1, 2, 4], n_sets=3, group_regex=r"patient\d+", set_seed=0)
    pool = {str(tmp_path / f"{n}.nii.gz") for n in names[:-2]}
    for s in range(3):
        small, large = ({e["image"] for e in sets[(k, s)]["training"]} for k in (1, 4))
        assert small < large and len(small) == 2 and len(large) == 8  # both frames of each patient, nested
        for k in (1, 2, 4):
            d = sets[(k, s)]
            labelled = {e["image"] for e in d["training"]}
            assert labelled | {e["image"] for e in d["unlabeled"]} == pool and not labelled & {
                e["image"] for e in d["unlabeled"]}
            assert [e["image"] for e in d["test"]] == [str(tmp_path / "test_a.nii.gz")]
    assert len({frozenset(e["image"] for e in sets[(1, s)]["training"]) for s in range(3)}) > 1
    with pytest.raises(SystemExit, match="exceeds"):
        label_efficiency.draw_labelled_sets(path, [9], 1, r"patient\d+", 0)


def test_centre_crop_keeps_world_coordinates(tmp_path):
    from volssl.io import load_nifti, save_nifti

    array = np.arange(10 * 7 * 3, dtype=np.float32).reshape(10, 7, 3)
    affine = np.diag([1.5, 2.0, 10.0, 1.0])
    affine[:3, 3] = [5.0, -3.0, 1.0]
    save_nifti(array, affine, tmp_path / "src" / "imagesTr" / "a.nii.gz")
    save_nifti((array > 100).astype(np.uint8), affine, tmp_path / "src" / "labelsTr" / "a.nii.gz")
    entry = {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}
    (tmp_path / "src" / "datalist.json").write_text(json.dumps({"training": [entry]}))
    label_efficiency.crop(str(tmp_path / "src" / "datalist.json"), str(tmp_path / "out"), size=[4, 9])
    out, out_affine = load_nifti(tmp_path / "out" / "imagesTr" / "a.nii.gz")
    assert out.shape == (4, 9, 3)
    # x: crop rows 3..6 of 10; y: 7 rows padded to 9 (one zero row before)
    np.testing.assert_array_equal(out[:, 1:8], array[3:7])
    assert (out[:, 0] == 0).all() and (out[:, 8] == 0).all()
    world = lambda aff, ijk: aff[:3, :3] @ np.asarray(ijk, float) + aff[:3, 3]
    np.testing.assert_allclose(world(out_affine, [0, 1, 2]), world(affine, [3, 0, 2]))
    assert json.loads((tmp_path / "out" / "datalist.json").read_text())["training"][0]["label"] == "labelsTr/a.nii.gz"


# --- the tool -------------------------------------------------------------------------------------------------------


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _run_tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


def test_dry_run_plans_every_arm_mode_and_pair_without_running(tmp_path):
    datalist = make_tiny_dataset(tmp_path / "data", n=8, n_labeled=4, n_val=1, n_test=2)
    out = tmp_path / "le"
    proc = _run_tool(["run", "--datalist", str(datalist), "--output_dir", str(out), "--label_counts", "[1,2]",
                      "--n_sets", "2", "--seeds", "[0,1]", "--lr_grid", "[0.001,0.003]", "--dry_run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = proc.stdout
    assert "0 step(s) done" in plan and not out.exists()
    for arm in ("pcl", "coral", "sal"):
        assert f"pretrain {arm} seed 0" in plan
    # the grid on the tuning pair for every count, mode and arm; then every pair at the chosen rate
    for mode in ("full", "frozen"):
        for arm in ("random", "pcl", "coral", "sal"):
            assert f"train {mode} n2 set0 seed0 {arm} lr 0.003" in plan
            assert f"train + test {mode} n1 set1 seed1 {arm} at the chosen rate" in plan
    semi = _run_tool(["run", "--datalist", str(datalist), "--output_dir", str(out), "--family", "semi",
                      "--label_counts", "[2]", "--n_sets", "1", "--seeds", "[0]", "--dry_run"], tmp_path)
    assert semi.returncode == 0, semi.stderr[-3000:]
    assert "train full n2 set0 seed0 supervised lr" in semi.stdout
    assert "crln lr 0.01 (epochs: the baseline's)" in semi.stdout  # budget matched to the baseline's plateau
    bad = _run_tool(["run", "--datalist", str(datalist), "--output_dir", str(out), "--family", "semi", "--finetune",
                     "['frozen']", "--dry_run"], tmp_path)
    assert bad.returncode != 0 and "not available" in bad.stderr


def test_a_single_learning_rate_is_recorded_as_the_choice(tmp_path):
    settings = {"lr_grid": [0.002], "lr_tuning_pairs": 1, "family": "slice", "pretrain_per_seed": False}
    proto = label_efficiency.Protocol(settings, ["random"], [1], 1, [0], ["full"], tmp_path)
    runner = label_efficiency._Runner(proto, tmp_path, [], dry_run=False, variants={})
    assert runner._choose("full", 1, "random") == 0.002
    # summarize finds the runs through this file, also when there was nothing to tune
    assert json.loads((tmp_path / "lr_choice.json").read_text()) == {"full/n1/random": 0.002}


def test_phantom_protocol_end_to_end(tmp_path):
    """random vs PCL, 1 labelled volume, 2 labelled sets x 1 seed, a 2-value learning-rate grid, early stopping."""
    datalist = make_tiny_dataset(tmp_path / "data", n=8, n_labeled=4, n_val=1, n_test=2)
    out = tmp_path / "le"
    args = ["run", "--datalist", str(datalist), "--output_dir", str(out), "--arms", "['random','pcl']",
            "--label_counts", "[1]", "--n_sets", "2", "--seeds", "[0]", "--finetune", "['full']",
            "--lr_grid", "[0.001,0.003]", "--patience", "2", "--overlay", "None", "--overrides", repr(TINY)]
    proc = _run_tool(args, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    # PCL pretraining ran with the PCL overlay (no learnable loss parameter, unlike CORAL's OAL direction)
    assert torch.load(out / "pretrain" / "pcl" / "models" / "pretrain.pt", weights_only=True)["loss"] == {}
    # the learning rate of each arm: the grid value with the best validation Dice on the tuning pair (set 0, seed 0)
    choice = json.loads((out / "lr_choice.json").read_text())
    for arm in ("random", "pcl"):
        runs = out / "runs" / "full" / "n1" / "set0" / "seed0" / arm
        val = {lr: json.loads((runs / f"lr{lr:g}" / "train_done.json").read_text())["best_val_dice"]
               for lr in (0.001, 0.003)}
        chosen = choice[f"full/n1/{arm}"]
        assert chosen == max(val, key=lambda lr: (val[lr], -lr))
        other = 0.003 if chosen == 0.001 else 0.001
        assert (runs / f"lr{chosen:g}" / "eval").is_dir() and not (runs / f"lr{other:g}" / "eval").exists()

    rows = _csv(out / "runs.csv")
    assert sorted((r["arm"], r["set"]) for r in rows) == [("pcl", "0"), ("pcl", "1"), ("random", "0"),
                                                          ("random", "1")]
    for r in rows:
        assert 0.0 <= float(r["dice_mean_fg"]) <= 1.0 and r["hd95_mm_mean_fg"] != ""
        assert int(r["epochs_run"]) <= 3 and r["labelled_volumes"] == "1"
    paired = _csv(out / "paired.csv")
    assert len(paired) == 1 and paired[0]["arm"] == "pcl" and paired[0]["n_pairs"] == "2"
    dice = {(r["arm"], r["set"]): float(r["dice_mean_fg"]) for r in rows}
    diffs = [dice[("pcl", s)] - dice[("random", s)] for s in ("0", "1")]
    assert float(paired[0]["diff_mean"]) == pytest.approx(statistics.fmean(diffs))
    assert float(paired[0]["ci_low"]) <= float(paired[0]["diff_mean"]) <= float(paired[0]["ci_high"])
    assert min(diffs) - 1e-9 <= float(paired[0]["ci_low"]) and float(paired[0]["ci_high"]) <= max(diffs) + 1e-9
    table = (out / "paired.md").read_text()
    assert "| full | 1 / 1 | pcl (" in table and "95 % CI (bootstrap)" in table
    assert (out / "curve.png").stat().st_size > 0

    # an interrupted run continues: drop one run's markers, rerun, only that run is trained and tested again
    victim = out / "runs" / "full" / "n1" / "set1" / "seed0" / "pcl" / f"lr{choice['full/n1/pcl']:g}"
    (victim / "train_done.json").unlink()
    (victim / "eval" / "metrics_summary.json").unlink()
    again = _run_tool(args, tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert again.stdout.count("[train ") == 1 and again.stdout.count("[test ") == 1
    assert "[train full n1 set1 seed0 pcl" in again.stdout and "resuming from" in (victim / "train.log").read_text()
    assert (victim / "train_done.json").is_file()
    # everything finished: a third call with one more evaluation of each run trains nothing and only runs that
    # evaluation (here the same checkpoint again, so the same Dice); changed settings are refused
    again_model = repr({"again": {"checkpoint": "{root}/models/model.pt"}})
    third = _run_tool([*args, "--eval_variants", again_model], tmp_path)
    assert third.returncode == 0, (third.stdout + third.stderr)[-4000:]
    assert "[train " not in third.stdout and "[test full" not in third.stdout
    assert third.stdout.count("[test (again) ") == 4
    rows = _csv(out / "runs.csv")
    assert all(float(r["dice_mean_fg_again"]) == pytest.approx(float(r["dice_mean_fg"])) for r in rows)
    models = [r["model"] for r in _csv(out / "paired.csv")]
    assert models == ["selected", "again"] and "| again | full | 1 / 1 | pcl (" in (out / "paired.md").read_text()
    changed = _run_tool([*args[:-1], repr({**TINY, "epochs": 5})], tmp_path)
    assert changed.returncode != 0 and "other settings (overrides)" in changed.stderr


# --- set-level interval, budget curve, paper recipe -------------------------------------------------------------------


def test_set_level_interval_averages_the_seeds_of_a_set_first():
    # 3 sets x 2 seeds: the seeds of a set agree, the sets do not; the t interval is taken over the 3 set means
    diffs = {(0, 0): 0.10, (0, 1): 0.12, (1, 0): -0.02, (1, 1): 0.00, (2, 0): 0.05, (2, 1): 0.03}
    out = label_efficiency.set_level_interval(diffs)
    means = [0.11, -0.01, 0.04]
    assert out["n_sets"] == 3 and out["set_diff_mean"] == pytest.approx(statistics.fmean(means))
    assert (out["set_t_low"], out["set_t_high"]) == tuple(pytest.approx(v) for v in paired_stats.t_interval(means))
    pair_t = paired_stats.t_interval(list(diffs.values()))
    assert out["set_t_high"] - out["set_t_low"] > pair_t[1] - pair_t[0]  # 3 units, not 6: wider
    one = label_efficiency.set_level_interval({(0, 0): 0.1, (0, 1): 0.2})
    assert one["n_sets"] == 1 and math.isnan(one["set_t_low"])
    # N sets x 1 seed (the LA-half protocol's 6 sets): the set-level interval is the paired t interval
    single = {(s, 0): d for s, d in enumerate([0.05, 0.02, 0.08, -0.01, 0.04, 0.06])}
    got = label_efficiency.set_level_interval(single)
    assert (got["set_t_low"], got["set_t_high"]) == tuple(pytest.approx(v) for v in
                                                          paired_stats.t_interval(list(single.values())))


def test_budget_arms_are_named_after_their_pretraining_epochs(tmp_path):
    assert label_efficiency.split_arm("coral_e200") == ("coral", 200)
    assert label_efficiency.split_arm("random") == ("random", None)
    settings = {"lr_grid": [0.001], "lr_tuning_pairs": 1, "family": "slice", "pretrain_per_seed": False,
                "budget_epochs": [200, 50]}
    proto = label_efficiency.Protocol(settings, ["random", "pcl", "coral"], [1], 3, [0, 1], ["full"], tmp_path)
    assert proto.arms == ["random", "pcl_e50", "pcl_e200", "coral_e50", "coral_e200"]
    assert proto.pretrain_arms == ["pcl", "coral"]
    assert proto.pretrained_ckpt("coral_e50", 1) == tmp_path / "pretrain" / "coral" / "models" / "pretrain_epoch50.pt"
    # a protocol.json stores the expanded arms: reading it back gives the same arms
    again = label_efficiency.Protocol(settings, proto.arms, [1], 3, [0, 1], ["full"], tmp_path)
    assert again.arms == proto.arms
    # the widest interval is drawn, never the narrowest
    row = {"ci_low": 0.01, "ci_high": 0.03, "t_low": -0.01, "t_high": 0.05, "set_t_low": float("nan")}
    assert label_efficiency.widest_interval(row) == (-0.01, 0.05)


def test_a_protocol_made_before_min_epochs_is_continued_only_with_its_setting(tmp_path):
    # a protocol.json written before min_epochs, train_overlay and budget_epochs existed (they ran with 0, none, none)
    old = {k: None for k in label_efficiency.FIXED_SETTINGS
           if k not in label_efficiency.SETTING_DEFAULTS}
    (tmp_path / "protocol.json").write_text(json.dumps({"settings": old}))
    now = {**old, "train_overlay": [], "budget_epochs": [], "min_epochs": 10}  # the bundles' default today
    with pytest.raises(SystemExit, match=r"other settings \(min_epochs\).*--min_epochs 0"):
        label_efficiency._check_settings(tmp_path, now)
    label_efficiency._check_settings(tmp_path, {**now, "min_epochs": 0})  # what it ran with: accepted


# slow (60-130 s): the default suite keeps the protocol's end-to-end test, the budget arms' names and the dry run of
# every evidence protocol; `-m slow` runs this one
@pytest.mark.slow
def test_budget_curve_and_paper_recipe_on_phantoms(tmp_path):
    """One CORAL pretraining of 2 epochs kept after epochs 1 and 2, each snapshot fine-tuned under the paper recipe
    overlay (and random init), 1 labelled volume, 1 set x 1 seed: the budget table and figure, the pooled 2D Dice
    column, and a rerun that trains nothing. About 1.5 min on 2 cores: the only end-to-end proof of the tooling."""
    datalist = make_tiny_dataset(tmp_path / "data", n=8, n_labeled=4, n_val=1, n_test=2)
    out = tmp_path / "le"
    tiny = {k: v for k, v in TINY.items() if k not in ("pretrain_epochs", "epochs")}
    args = ["run", "--datalist", str(datalist), "--output_dir", str(out), "--arms", "['random','coral']",
            "--label_counts", "[1]", "--n_sets", "1", "--seeds", "[0]", "--finetune", "['full']",
            "--budget_epochs", "[1,2]", "--train_overlay", "paper_finetune.json", "--overlay", "None",
            "--patience", "None", "--min_epochs", "0", "--overrides", repr(tiny),
            "--train_overrides", repr({"epochs": 1, "val_interval": 1})]
    proc = _run_tool(args, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    models = out / "pretrain" / "coral" / "models"
    assert (models / "pretrain_epoch1.pt").is_file() and (models / "pretrain_epoch2.pt").is_file()
    first = torch.load(models / "pretrain_epoch1.pt", weights_only=True)["network"]
    last = torch.load(models / "pretrain.pt", weights_only=True)["network"]
    assert set(first) == set(last) and any(not torch.equal(first[k], last[k]) for k in last)
    runs = out / "runs" / "full" / "n1" / "set0" / "seed0"
    log = (runs / "coral_e1" / "lr5e-05" / "train.log").read_text()
    assert "paper_finetune.json" in log and "pretrain_epoch1.pt" in log and "last val_mean_dice" in log
    rows = _csv(out / "runs.csv")
    assert sorted(r["arm"] for r in rows) == ["coral_e1", "coral_e2", "random"]
    assert all(r["learning_rate"] == "5e-05" and 0 <= float(r["pooled_dice_2d_mean_fg"]) <= 1 for r in rows)
    budget = _csv(out / "budget.csv")
    assert [(r["method"], r["pretrain_epochs"]) for r in budget] == [("coral", "1"), ("coral", "2")]
    iters = [int(r["pretrain_iterations"]) for r in budget]
    assert iters[1] == 2 * iters[0] > 0
    dice = {r["arm"]: float(r["dice_mean_fg"]) for r in rows}
    assert float(budget[0]["diff_mean"]) == pytest.approx(dice["coral_e1"] - dice["random"])
    assert "pretraining iterations" in (out / "budget.md").read_text()
    assert (out / "budget.png").stat().st_size > 0
    table = (out / "paired.md").read_text()
    assert "95 % CI (t over sets)" in table and "pooled 2D Dice, arm / baseline" in table
    again = _run_tool(args, tmp_path)
    assert again.returncode == 0 and "[train " not in again.stdout and "[pretrain " not in again.stdout


# --- the GPU protocol script (runs only on a GPU; here: its refusal and its plan) -----------------------------------

GPU_SCRIPT = REPO_ROOT / "tools" / "gpu_protocol.sh"


def _gpu_script(args: list[str], env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run(["bash", str(GPU_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600, check=False)


def test_gpu_protocol_refuses_to_start_without_cuda(tmp_path):
    proc = _gpu_script([], {"CUDA_VISIBLE_DEVICES": "", "DATA_OUT": str(tmp_path / "data"),
                            "OUT": str(tmp_path / "out")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA GPU is visible" in proc.stderr and "was not started" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()  # nothing prepared, nothing run
    bad = _gpu_script(["--fast"], {})
    assert bad.returncode == 64 and "unknown argument" in bad.stderr


def test_gpu_protocol_dry_run_prints_the_plan(tmp_path):
    data = tmp_path / "data"
    make_tiny_dataset(data / "acdc128", n=8, n_labeled=4, n_val=1, n_test=2)
    make_tiny_dataset(data / "la", n=12, n_labeled=8, n_val=1, n_test=2)
    proc = _gpu_script(["--dry-run"], {"CUDA_VISIBLE_DEVICES": "", "DATA_OUT": str(data),
                                       "OUT": str(tmp_path / "out")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # part A: CORAL vs random init, 2 labelled, f = 48; part B: CRLN vs supervised at 112 x 112 x 80; one labelled
    # set per part by default (what the H200 measurements say fits in 8 minutes)
    assert '"features": 48' in out and "pretrain coral seed 0" in out and "train full n2 set0 seed0 coral" in out
    assert "set1" not in out
    assert '"patch_size": [112, 112, 80]' in out and "train full n8 set0 seed0 supervised" in out
    assert "crln lr" in out and "(epochs: the baseline's)" in out
    assert not (tmp_path / "out").exists()
    missing = _gpu_script(["--dry-run"], {"DATA_OUT": str(tmp_path / "none"), "OUT": str(tmp_path / "out")})
    assert missing.returncode == 0 and "data not prepared yet" in missing.stdout


# --- the evidence runs script (here: its plan only) ----------------------------------------------------------------

EVIDENCE_SCRIPT = REPO_ROOT / "tools" / "evidence_runs.sh"


def test_evidence_runs_dry_run_prints_every_protocol(tmp_path):
    data = tmp_path / "data"
    make_tiny_dataset(data / "acdc96", n=8, n_labeled=4, n_val=1, n_test=2)
    make_tiny_dataset(data / "la_pool", n=12, n_labeled=9, n_val=1, n_test=2)
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", DATA=str(data), OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", str(EVIDENCE_SCRIPT), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # budget curve: one pretraining per method, every snapshot an arm, full and frozen
    assert "pretrain coral seed 0" in out and "pretrain pcl seed 0" in out
    for arm in ("coral_e50", "coral_e200", "coral_e800", "pcl_e800"):
        assert f"train full n1 set0 seed0 {arm} lr 0.001" in out and f"frozen n1 set2 seed1 {arm}" in out
    # the paper recipe: its overlay, one learning rate, 1 and 2 patients
    assert "paper_finetune.json" in out and "train full n2 set0 seed0 coral lr 5e-05" in out
    # LA-half: 6 labelled sets x 1 seed; hippocampus not prepared here: the script says so instead of failing
    assert "train full n8 set5 seed0 supervised" in out and "seed1" not in out.split("LA-half")[1]
    assert "data not prepared yet" in out and "hippo_pool" in out
    assert not (tmp_path / "out").exists()
    bad = subprocess.run(["bash", str(EVIDENCE_SCRIPT), "--fast"], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 64 and "unknown argument" in bad.stderr
