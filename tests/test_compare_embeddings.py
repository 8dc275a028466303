"""tools/compare_embeddings.py: the arm presets, the summary table and a tiny end-to-end run (random + one SAL arm)
through the bundle and probe commands, including the skip of finished steps."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from bundle_helpers import REPO_ROOT, make_tiny_dataset

sys.path.insert(0, str(REPO_ROOT / "tools"))
import compare_embeddings  # noqa: E402

TOOL = REPO_ROOT / "tools" / "compare_embeddings.py"


def test_presets_name_documented_sal_settings():
    import json as _json

    sal = _json.loads((REPO_ROOT / "bundles/sal_mri_segmentation/configs/pretrain.json").read_text())
    for name, spec in compare_embeddings.SAL_ABLATION.items():
        if spec["bundle"] is None:
            continue
        unknown = set(spec["overrides"]) - set(sal)
        assert not unknown, f"{name} overrides ids that pretrain.json does not define: {unknown}"
        # each ablation changes something away from the defaults
        assert all(sal[k] != v for k, v in spec["overrides"].items()) and (spec["overrides"] or name == "sal_default")
    assert set(compare_embeddings.PRETRAINING) == {"random", "coral", "sal_default"}
    assert compare_embeddings._arms("pretraining") == compare_embeddings.PRETRAINING
    both = compare_embeddings._arms("sal_ablation,pretraining")
    assert list(both) == list(compare_embeddings.SAL_ABLATION) + ["coral"]
    assert compare_embeddings._arms(("sal_ablation", "pretraining")) == both  # as fire passes "a,b"
    with pytest.raises(SystemExit, match="must be one of"):
        compare_embeddings._arms("[1, 2]")


def _fake_arm(root, name, channel_std, bundle="b", la=None):
    (root / name / "probe").mkdir(parents=True)
    probe = {"n_volumes": 4, "n_slices": 40, "position_r2": 0.5, "nn_position_error": 0.1, "cosine_mean": 0.9,
             "channel_std": channel_std}
    (root / name / "probe" / "embeddings.json").write_text(json.dumps(probe))
    if la is not None:
        curve = root / name / "logs" / "pretrain"
        curve.mkdir(parents=True)
        (curve / "pretrain_curve.csv").write_text(
            "epoch,probe_channel_std,train_la,train_loss\n0.0,0.1,,\n1.0,0.2,0.5,1.0\n2.0,,%s,0.9\n" % la)
    return {"bundle": bundle, "overrides": {"x": 1}} if bundle else {"bundle": None}


def test_summarize_ratio_and_curve_terms(tmp_path):
    arms = {"random": _fake_arm(tmp_path, "random", 0.004, bundle=None), "a": _fake_arm(tmp_path, "a", 0.002, la=0.25)}
    (tmp_path / "protocol.json").write_text(json.dumps({"arms": arms, "role": "test", "datalist": "d.json"}))
    compare_embeddings.summarize(str(tmp_path), ["random", "a"])
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["arm"] for r in rows] == ["random", "a"]
    assert float(rows[0]["std_ratio"]) == 1.0 and float(rows[1]["std_ratio"]) == pytest.approx(0.5)
    assert float(rows[1]["train_la"]) == 0.25  # the last epoch with a loss, not the probe-only row
    assert rows[0]["overrides"] == "random init"
    assert "| a | 0.5 | 0.1 | 0.9 | 0.002 | 0.5 | 0.25 |" in (tmp_path / "results.md").read_text()


def test_end_to_end_tiny(tmp_path):
    datalist = make_tiny_dataset(tmp_path / "data", n=6, n_labeled=2, n_val=1, n_test=2)
    tiny = {"features": 4, "patch_size": [32, 32], "pretrain_batch_size": 8, "pretrain_epochs": 1,
            "probe_interval": 0}
    arms = {"random": {"bundle": None},
            "sal": {"bundle": "bundles/sal_mri_segmentation", "overrides": {"window": 1}}}
    cmd = [sys.executable, str(TOOL), "run", "--datalist", str(datalist), "--output_dir", str(tmp_path / "out"),
           "--arms", repr(arms), "--overrides", repr(tiny)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "out" / "sal" / "models" / "pretrain.pt").is_file()
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [r["arm"] for r in rows] == ["random", "sal"]
    for r in rows:
        assert int(r["n_volumes"]) == 2 and 0 < float(r["channel_std"]) < 1
    assert json.loads((tmp_path / "out" / "protocol.json").read_text())["arms"] == arms
    # a second call skips both finished steps of every arm
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done earlier") == 3
