"""SAL bundle smoke tests on tiny phantom data: the CLI from two working directories, the MONAI bundle checks
(verify_net_in_out, ckpt_export), ConfigWorkflow (initialize, check_properties, run, finalize; pretraining resumed
from a checkpoint), and the rule that fine-tuning, inference and evaluation stay identical to the CORAL bundle's."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_helpers import BUNDLES, REPO_ROOT, config_list, make_tiny_dataset, run_bundle, run_torchrun, write_overlay

BUNDLE = BUNDLES / "sal_mri_segmentation"
CONFIGS = BUNDLE / "configs"
CORAL_CONFIGS = BUNDLES / "coral_mri_segmentation" / "configs"
# features 4 and 32 x 32 patches: the default alignment level 3 is 4 x 4, divisible by the default window r = 2; the
# embedding probe reads the 3 unlabelled volumes (the tiny data set has a single validation volume)
TINY = {
    "features": 4,
    "patch_size": [32, 32],
    "num_workers": 0,
    "pretrain_batch_size": 8,
    "pretrain_epochs": 1,
    "probe_roles": ["unlabeled"],
    "probe_interval": 1,
    "batch_size": 8,
    "epochs": 2,
    "learning_rate": 0.001,
    "sw_batch_size": 8,
}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# --- the one duplication MONAI Label's one-file rule forces: it may never drift from CORAL's -------------------------


@pytest.mark.parametrize("name", ["train.json", "inference.json", "multi_gpu_train.json", "paper_finetune.json"])
def test_finetune_and_inference_configs_equal_corals(name):
    """SAL and CORAL share the network, data pipeline and fine-tuning protocol (methods.md), so that the two
    pretrainings compare one to one: the configs are copies, kept identical by this test."""
    assert _json(CONFIGS / name) == _json(CORAL_CONFIGS / name), f"{name} differs from the CORAL bundle's"


def test_evaluate_config_equals_corals_up_to_title():
    sal, coral = _json(CONFIGS / "evaluate.json"), _json(CORAL_CONFIGS / "evaluate.json")
    assert "title='SAL'" in json.dumps(sal)
    assert json.loads(json.dumps(sal).replace("title='SAL'", "title='CORAL'")) == coral


def _finetuning_ids() -> set[str]:
    """The config ids that fine-tuning, inference and evaluation read (defined in or referenced by their configs)."""
    ids = set()
    for name in ("train.json", "inference.json", "evaluate.json"):
        text = (CORAL_CONFIGS / name).read_text()
        ids |= set(_json(CORAL_CONFIGS / name)) | set(re.findall(r"@([A-Za-z_][A-Za-z0-9_]*)", text))
    return ids


def _level_side(side: int, level: int) -> int:
    return side // 2 ** (level % 5)


def test_cpu_small_equals_corals_outside_pretraining():
    """The CPU-sized variant fine-tunes and infers exactly as CORAL's: every value that fine-tuning, inference or
    evaluation reads is the same; only pretraining values (``pretrain_*`` and SAL's own ids) may differ."""
    sal, coral = _json(CONFIGS / "cpu_small.json"), _json(CORAL_CONFIGS / "cpu_small.json")
    used = _finetuning_ids()
    assert {"features", "patch_size", "epochs", "batch_size"} <= used
    for key in used & (set(sal) | set(coral)):
        assert sal.get(key) == coral.get(key), key
    pretrain_ids = set(_json(CONFIGS / "pretrain.json"))
    assert set(sal) - set(coral) <= pretrain_ids - used  # SAL's extra overlay values are pretraining values
    # the windowed alignment needs the alignment level's map divisible by the window
    window = _json(CONFIGS / "pretrain.json")["window"]
    level = sal.get("alignment_level", _json(CONFIGS / "pretrain.json")["alignment_level"])
    assert all(_level_side(side, level) % window == 0 and side % 16 == 0 for side in sal["patch_size"])
    assert all(_level_side(side, level) >= 12 for side in sal["patch_size"])  # a window holds real structure


def test_pretrain_config_defaults():
    """The documented defaults (the model card's table of choices, methods.md section 2 and CORAL's schedule)."""
    cfg = _json(CONFIGS / "pretrain.json")
    assert (cfg["pair_threshold"], cfg["window"], cfg["embed_dim"], cfg["symmetric"]) == (0.1, 2, 128, True)
    # LA where a window holds structure (level 3: 44 x 44 at 352), not on the bottleneck, where it collapsed
    assert (cfg["alignment_level"], cfg["pair_augmentation"], cfg["la_weight"]) == (3, "shared", 1.0)
    assert [_level_side(side, cfg["alignment_level"]) for side in cfg["patch_size"]] == [44, 44]
    # GP: contrastive over the pooled bottleneck of all slices of the batch (many subjects), lambda = 1
    assert (cfg["position_mode"], cfg["position_level"], cfg["gp_weight"]) == ("contrastive", -1, 1.0)
    assert (cfg["gp_threshold"], cfg["gp_temperature"], cfg["gp_standardize"], cfg["position_dim"]) == (
        0.1, 0.1, True, 128)
    # CORAL's SGD schedule at a tenth of its learning rate: at 0.1 the first epoch nearly collapsed (docs/README.md)
    assert (cfg["pretrain_learning_rate"], cfg["momentum"], cfg["pretrain_weight_decay"]) == (0.01, 0.9, 1e-5)
    assert (cfg["pretrain_epochs"], cfg["pretrain_batch_size"], cfg["patch_size"], cfg["features"]) == (
        300, 32, [352, 352], 48)
    assert (cfg["probe_roles"], cfg["probe_volumes"], cfg["probe_interval"]) == (["validation"], 8, 5)
    assert all(_level_side(side, cfg["alignment_level"]) % cfg["window"] == 0 for side in cfg["patch_size"])
    meta = _json(CONFIGS / "metadata.json")
    assert meta["version"] in meta["changelog"] and "arXiv:2406.15699" in " ".join(meta["references"])


# --- runs on tiny phantom data ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny data set, a tiny overlay and a bundle root outside the repository, pretrained and fine-tuned once
    with the CLI from an unrelated working directory."""
    root = tmp_path_factory.mktemp("sal")
    datalist = make_tiny_dataset(root / "data")
    tiny = write_overlay(root / "tiny.json", TINY)
    bundle_root = root / "bundle"
    common = ["--bundle_root", str(bundle_root), "--dataset_dir", str(root / "data"),
              "--logging_file", str(CONFIGS / "logging.conf")]
    elsewhere = root / "cwd"
    elsewhere.mkdir()
    run_bundle(["run", "--config_file", config_list(CONFIGS / "pretrain.json", tiny), *common], cwd=elsewhere)
    run_bundle(["run", "--config_file", config_list(CONFIGS / "train.json", tiny), *common], cwd=elsewhere)
    return {"root": root, "datalist": datalist, "tiny": tiny, "bundle_root": bundle_root, "common": common}


def test_pretrain_and_train_outputs(workspace):
    models = workspace["bundle_root"] / "models"
    pretrained = torch.load(models / "pretrain.pt", weights_only=True)
    # CORAL's layout; SAL's loss has no parameters (the embedding and positional head are in the network)
    assert set(pretrained) == {"network", "loss"} and pretrained["loss"] == {}
    prefixes = {k.split(".")[0] for k in pretrained["network"]}
    assert prefixes == {"encoder", "embedding", "position_head"}
    assert pretrained["network"]["embedding.weight"].shape[:2] == (128, 8 * TINY["features"])  # LA: level 3
    # GP: a projection of the pooled bottleneck, one slice at a time
    assert pretrained["network"]["position_head.fc1.weight"].shape == (256, 16 * TINY["features"])
    assert pretrained["network"]["position_head.fc2.weight"].shape == (128, 256)
    assert len(list((models / "pretrain_checkpoints").glob("checkpoint_epoch=*.pt"))) == 1
    with open(workspace["bundle_root"] / "logs" / "pretrain" / "pretrain_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # the embedding probe's row before training (epoch 0), then one row per epoch
    assert [float(r["epoch"]) for r in rows] == [0.0] + [float(e + 1) for e in range(TINY["pretrain_epochs"])]
    terms = ("train_loss", "train_la", "train_gp", "train_la_cosine")
    assert set(terms) <= set(rows[1]) and all(np.isfinite(float(rows[1][k])) for k in terms)
    probe = ("probe_position_r2", "probe_nn_position_error", "probe_cosine_mean", "probe_channel_std")
    assert all(np.isfinite(float(r[k])) for r in rows for k in probe)
    # fine-tuning saved a plain state dict selected on validation Dice
    model = torch.load(models / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in model.values())
    assert len(list((models / "train_checkpoints").glob("checkpoint_epoch=*.pt"))) == 1
    curve = (workspace["bundle_root"] / "logs" / "train" / "train_curve.csv").read_text().splitlines()
    assert curve[0].startswith("epoch") and "val_mean_dice" in curve[0] and len(curve) == 1 + TINY["epochs"]


def test_train_loads_sal_encoder(workspace):
    """train.json (CORAL's) puts the SAL encoder into the U-Net and drops the embedding and the positional head."""
    from monai.bundle import ConfigParser

    def network(load_pretrain: bool):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.json"), str(workspace["tiny"])])
        parser["bundle_root"] = str(workspace["bundle_root"])
        parser["dataset_dir"] = str(workspace["root"] / "data")
        parser["load_pretrain"] = load_pretrain
        return parser.get_parsed_content("network")

    pre = torch.load(workspace["bundle_root"] / "models" / "pretrain.pt", weights_only=True)["network"]
    pre_encoder = {k: v for k, v in pre.items() if k.startswith("encoder.")}
    enc = {k: v for k, v in network(True).state_dict().items() if k.startswith("encoder.")}
    assert enc.keys() == pre_encoder.keys()
    assert all(torch.equal(v.cpu(), pre_encoder[k]) for k, v in enc.items())
    random_init = network(False).state_dict()
    assert not all(torch.equal(random_init[k], v) for k, v in pre_encoder.items())


def test_infer_and_evaluate_from_repo_root(workspace):
    """Relative config paths from the repository root; NIfTI out on the input grid; metrics and overlay written."""
    rel = [str((CONFIGS / name).relative_to(REPO_ROOT)) for name in ("inference.json", "evaluate.json")]
    run_bundle(["run", "--config_file", config_list(*rel, workspace["tiny"]), *workspace["common"]], cwd=REPO_ROOT)
    eval_dir = workspace["bundle_root"] / "eval"
    test_cases = _json(workspace["datalist"])["test"]
    assert len(list((eval_dir / "predictions").glob("*_seg.nii.gz"))) == len(test_cases)
    for case in test_cases:
        image = nib.load(workspace["root"] / "data" / case["image"])
        pred = nib.load(eval_dir / "predictions" / Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz"))
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3}
    summary = _json(eval_dir / "metrics_summary.json")
    assert summary["role"] == "test" and summary["n_cases"] == len(test_cases)
    assert (eval_dir / "overlay.png").stat().st_size > 1000


def test_verify_net_in_out_and_ckpt_export(workspace):
    """MONAI's checks, called in-process: the same functions as ``python -m monai.bundle verify_net_in_out`` and
    ``ckpt_export`` (the CLI itself is exercised by the run commands; each extra subprocess costs a MONAI import)."""
    from monai.bundle import ckpt_export, verify_net_in_out

    verify_net_in_out("network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), n=2, any=16, features=4)
    ts = workspace["root"] / "model.ts"
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(workspace["bundle_root"] / "models" / "model.pt"),
                meta_file=str(CONFIGS / "metadata.json"),
                config_file=[str(CONFIGS / "inference.json"), str(workspace["tiny"])],
                bundle_root=str(workspace["bundle_root"]))
    scripted = torch.jit.load(str(ts))
    from volssl.networks import UNet2d

    net = UNet2d(1, 4, features=TINY["features"])
    net.load_state_dict(torch.load(workspace["bundle_root"] / "models" / "model.pt", weights_only=True))
    net.eval()
    x = torch.randn(2, 1, 48, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize(
    "files, workflow_type",
    [(("train.json",), "train"), (("inference.json",), "infer"), (("pretrain.json",), None)],
)
def test_config_workflow(workspace, tmp_path, files, workflow_type):
    """ConfigWorkflow end to end; pretraining is given the epoch-1 checkpoint of an interrupted 2-epoch run, so it
    must resume (the SAL-specific resume state: network, loss, optimizer, scheduler, trainer) and run epoch 2 only."""
    from monai.bundle import ConfigWorkflow

    config_files = [str(CONFIGS / f) for f in files] + [str(workspace["tiny"])]
    bundle_root = tmp_path / "bundle"
    (bundle_root / "models").mkdir(parents=True)
    for name in ("pretrain.pt", "model.pt"):
        shutil.copy(workspace["bundle_root"] / "models" / name, bundle_root / "models" / name)
    if workflow_type is None:
        ckpt_dir = bundle_root / "models" / "pretrain_checkpoints"
        shutil.copytree(workspace["bundle_root"] / "models" / "pretrain_checkpoints", ckpt_dir)
        # the fixture's 1-epoch run had finished: make its checkpoint one of a 2-epoch run stopped after epoch 1
        # (a finished run is never resumed)
        ckpt = ckpt_dir / "checkpoint_epoch=1.pt"
        state = torch.load(ckpt, weights_only=True)
        state["trainer"]["max_epochs"] = 2
        torch.save(state, ckpt)
    workflow = ConfigWorkflow(
        config_file=config_files, meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type=workflow_type,
        bundle_root=str(bundle_root), dataset_dir=str(workspace["root"] / "data"), epochs=1, pretrain_epochs=2,
    )
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    if workflow_type == "train":
        assert (bundle_root / "models" / "train_checkpoints" / "checkpoint_epoch=1.pt").is_file()
    elif workflow_type == "infer":
        assert len(list((bundle_root / "eval").glob("*_seg.nii.gz"))) == 2
    else:
        ckpts = sorted(p.name for p in (bundle_root / "models" / "pretrain_checkpoints").glob("*.pt"))
        assert ckpts == ["checkpoint_epoch=2.pt"]
        with open(bundle_root / "logs" / "pretrain" / "pretrain_curve.csv", newline="") as f:
            assert [float(r["epoch"]) for r in csv.DictReader(f)] == [2.0]  # epoch 1 was not run again
        assert set(torch.load(bundle_root / "models" / "pretrain.pt", weights_only=True)) == {"network", "loss"}


def test_ddp_pretrain_with_torchrun(workspace, tmp_path):
    """SAL's multi-GPU pretraining overlay under torchrun (2 CPU processes, gloo): the loss has no parameters, so only
    the network is wrapped; the saved state dict is unwrapped and loads into a fine-tuning U-Net's encoder."""
    common = ["--bundle_root", str(tmp_path), "--dataset_dir", str(workspace["root"] / "data"),
              "--logging_file", str(CONFIGS / "logging.conf")]
    run_torchrun(["run", "--config_file", config_list(CONFIGS / "pretrain.json", CONFIGS / "multi_gpu_pretrain.json",
                                                       workspace["tiny"]), *common], cwd=tmp_path)
    pretrained = torch.load(tmp_path / "models" / "pretrain.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in pretrained["network"])
    from volssl.networks import UNet2d, with_encoder_weights

    with_encoder_weights(UNet2d(1, 4, features=TINY["features"]), tmp_path / "models" / "pretrain.pt")


def test_export_and_standalone_inference(workspace, tmp_path):
    """The exported zip verifies and segments a test image on its own (only the metadata's packages, the vendored
    volssl), from the bundle folder, with the values of the run's overlay folded into inference.json."""
    from bundle_helpers import assert_standalone_bundle

    assert_standalone_bundle(BUNDLE, workspace["bundle_root"], workspace["datalist"], tmp_path, trained=TINY)


def test_probe_reads_the_run_record_not_a_repeated_overlay(workspace, tmp_path):
    """tools/probe_embeddings.py --run_dir builds the run's network from its pretraining record (features 4,
    patch 32 x 32 here, not pretrain.json's defaults) with no overlay given; an overlay whose values differ from the
    record (cpu_small.json: features 16) is an error naming both values."""
    import json
    import sys

    tools = str(REPO_ROOT / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import probe_embeddings

    from volssl.io import VolsslInputError

    run = workspace["bundle_root"]
    args = {"bundle": str(BUNDLE), "datalist": str(workspace["datalist"]), "role": "test", "run_dir": str(run)}
    probe_embeddings.main(**args, output_dir=str(tmp_path / "probe"))
    result = json.loads((tmp_path / "probe" / "embeddings.json").read_text())
    assert result["patch_size"] == TINY["patch_size"] and result["feature_dim"] == 16 * TINY["features"]
    with pytest.raises(VolsslInputError) as err:
        probe_embeddings.main(**args, output_dir=str(tmp_path / "bad"), overlay="cpu_small.json")
    message = str(err.value)
    assert "pretraining_record.json" in message and "features=4" in message and "features=16" in message
    assert "--overlay cpu_small.json" in message
