"""CORAL bundle smoke tests on tiny phantom data: the CLI from two working directories, resume, the MONAI bundle
checks (verify_net_in_out, ckpt_export) and ConfigWorkflow (initialize, check_properties, run, finalize)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_helpers import BUNDLES, REPO_ROOT, config_list, make_tiny_dataset, run_bundle, run_torchrun, write_overlay

BUNDLE = BUNDLES / "coral_mri_segmentation"
CONFIGS = BUNDLE / "configs"
TINY = {
    "features": 4,
    "patch_size": [32, 32],
    "num_workers": 0,
    "pretrain_batch_size": 8,
    "pretrain_epochs": 1,
    "probe_roles": ["unlabeled"],  # the embedding probe needs two volumes; the tiny data set has one for validation
    "probe_interval": 1,
    "batch_size": 8,
    "epochs": 2,
    "learning_rate": 0.001,
    "sw_batch_size": 8,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny data set, a tiny overlay and a bundle root outside the repository, pretrained and fine-tuned once
    with the CLI from an unrelated working directory."""
    root = tmp_path_factory.mktemp("coral")
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
    assert set(pretrained) == {"network", "loss"}
    assert any(k.startswith("encoder.") for k in pretrained["network"])
    # the embedding probe logged its diagnostics before training (epoch 0) and after the epoch, into the curve CSV
    with open(workspace["bundle_root"] / "logs" / "pretrain" / "pretrain_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["epoch"]) for r in rows] == [0.0, 1.0]
    for key in ("probe_position_r2", "probe_nn_position_error", "probe_cosine_mean", "probe_channel_std"):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    # fine-tuning started from the pretrained encoder and saved a plain state dict selected on validation Dice
    model = torch.load(models / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in model.values())
    assert (models / "train_checkpoints").is_dir()
    assert len(list((models / "train_checkpoints").glob("checkpoint_epoch=*.pt"))) == 1
    curve = (workspace["bundle_root"] / "logs" / "train" / "train_curve.csv").read_text().splitlines()
    assert curve[0].startswith("epoch") and "val_mean_dice" in curve[0] and len(curve) == 1 + TINY["epochs"]


def test_train_loads_pretrained_encoder(workspace):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(workspace["tiny"])])
    parser["bundle_root"] = str(workspace["bundle_root"])
    parser["dataset_dir"] = str(workspace["root"] / "data")
    net = parser.get_parsed_content("network")
    pre = torch.load(workspace["bundle_root"] / "models" / "pretrain.pt", weights_only=True)["network"]
    enc = {k: v for k, v in net.state_dict().items() if k.startswith("encoder.")}
    assert enc and all(torch.equal(v.cpu(), pre[k]) for k, v in enc.items())
    parser2 = ConfigParser()
    parser2.read_config([str(CONFIGS / "train.json"), str(workspace["tiny"])])
    parser2["bundle_root"] = str(workspace["bundle_root"])
    parser2["load_pretrain"] = False
    net2 = parser2.get_parsed_content("network")
    assert not all(torch.equal(v, pre[k]) for k, v in net2.state_dict().items() if k.startswith("encoder."))


def test_paper_finetune_overlay_is_the_public_recipe_and_keeps_the_last_epoch(workspace):
    """``paper_finetune.json`` (the released CORAL/PCL fine-tuning: Adam 5e-5 -> 5e-6 cosine, weight decay 1e-5,
    cross-entropy, batch 10, 100 passes over the labelled slices, no early stopping, the last epoch's model) parses
    over ``cpu_small.json`` and runs; its checkpoint rule ships the last validated epoch, not the best one."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in ("train.json", "cpu_small.json", "paper_finetune.json")])
    assert (parser["epochs"], parser["learning_rate"], parser["min_learning_rate"]) == (100, 5e-5, 5e-6)
    assert (parser["weight_decay"], parser["dice_weight"], parser["batch_size"]) == (1e-5, 0.0, 10)
    assert parser["early_stop_patience"] is None and parser["iterations_per_epoch"] is None
    assert parser.config["validate"]["best_model"]["mode"] == "last"
    assert parser["features"] == 16  # the network size stays the overlay before it's (the pretrained encoder's)

    bundle_root = workspace["root"] / "paper_bundle"
    common = ["--bundle_root", str(bundle_root), "--dataset_dir", str(workspace["root"] / "data"),
              "--logging_file", str(CONFIGS / "logging.conf")]
    files = config_list(CONFIGS / "train.json", workspace["tiny"], CONFIGS / "paper_finetune.json")
    out = run_bundle(["run", "--config_file", files, *common, "--epochs", "2", "--val_interval", "1",
                      "--pretrained_ckpt", str(workspace["bundle_root"] / "models" / "pretrain.pt")],
                     cwd=workspace["root"])
    log = out.stdout + out.stderr
    assert "epoch 2: last val_mean_dice" in log  # saved at the last epoch whatever its validation Dice
    models = bundle_root / "models"
    last = torch.load(models / "train_checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)["network"]
    shipped = torch.load(models / "model.pt", weights_only=True)
    assert set(shipped) == set(last) and all(torch.equal(shipped[k], last[k]) for k in last)


def test_train_resumes_from_last_checkpoint(workspace):
    """An interrupted run continues from its saved epoch instead of starting again (the checkpoint of the finished
    2-epoch run is made to look like one of a 3-epoch run stopped after epoch 2)."""
    ckpt = workspace["bundle_root"] / "models" / "train_checkpoints" / f"checkpoint_epoch={TINY['epochs']}.pt"
    state = torch.load(ckpt, weights_only=True)
    state["trainer"]["max_epochs"] = TINY["epochs"] + 1
    torch.save(state, ckpt)
    proc = run_bundle(["run", "--config_file", config_list(CONFIGS / "train.json", workspace["tiny"]),
                       *workspace["common"], "--epochs", str(TINY["epochs"] + 1)], cwd=workspace["root"])
    out = proc.stdout + proc.stderr
    assert "resuming from" in out and "checkpoint_epoch=2.pt" in out
    assert f"Epoch[{TINY['epochs'] + 1}] Complete" in out and "Epoch[1] Complete" not in out
    ckpts = sorted(p.name for p in (workspace["bundle_root"] / "models" / "train_checkpoints").glob("*.pt"))
    assert ckpts == [f"checkpoint_epoch={TINY['epochs'] + 1}.pt"]


def test_infer_and_evaluate_from_repo_root(workspace):
    """Relative config paths from the repository root; NIfTI out on the input grid; metrics and overlay written."""
    rel = [str((CONFIGS / name).relative_to(REPO_ROOT)) for name in ("inference.json", "evaluate.json")]
    run_bundle(["run", "--config_file", config_list(*rel, workspace["tiny"]), *workspace["common"]], cwd=REPO_ROOT)
    eval_dir = workspace["bundle_root"] / "eval"
    preds = sorted((eval_dir / "predictions").glob("*_seg.nii.gz"))
    test_cases = json.loads(workspace["datalist"].read_text())["test"]
    assert len(preds) == len(test_cases)
    for case in test_cases:
        image = nib.load(workspace["root"] / "data" / case["image"])
        name = Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        pred = nib.load(eval_dir / "predictions" / name)
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3}
    summary = json.loads((eval_dir / "metrics_summary.json").read_text())
    assert summary["role"] == "test" and summary["n_cases"] == len(test_cases)
    assert (eval_dir / "overlay.png").stat().st_size > 1000


def test_verify_net_in_out_and_ckpt_export(workspace):
    run_bundle(["verify_net_in_out", "network_def", "--meta_file", str(CONFIGS / "metadata.json"),
                "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(BUNDLE),
                "--n", "2", "--any", "16", "--features", "4"], cwd=workspace["root"])
    ts = workspace["root"] / "model.ts"
    run_bundle(["ckpt_export", "network_def", "--filepath", str(ts),
                "--ckpt_file", str(workspace["bundle_root"] / "models" / "model.pt"),
                "--meta_file", str(CONFIGS / "metadata.json"),
                "--config_file", config_list(CONFIGS / "inference.json", workspace["tiny"]),
                "--bundle_root", str(workspace["bundle_root"])], cwd=workspace["root"])
    scripted = torch.jit.load(str(ts))
    from volssl.networks import UNet2d

    net = UNet2d(1, 4, features=4)
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
    from monai.bundle import ConfigWorkflow

    config_files = [str(CONFIGS / f) for f in files] + [str(workspace["tiny"])]
    bundle_root = tmp_path / "bundle"
    (bundle_root / "models").mkdir(parents=True)
    for name in ("pretrain.pt", "model.pt"):
        (bundle_root / "models" / name).write_bytes((workspace["bundle_root"] / "models" / name).read_bytes())
    workflow = ConfigWorkflow(
        config_file=config_files, meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type=workflow_type,
        bundle_root=str(bundle_root), dataset_dir=str(workspace["root"] / "data"), epochs=1, pretrain_epochs=1,
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
        assert (bundle_root / "models" / "pretrain_checkpoints" / "checkpoint_epoch=1.pt").is_file()


def test_ddp_pretrain_and_train_with_torchrun(workspace, tmp_path):
    """The multi-GPU overlays run under torchrun (2 CPU processes, gloo here; NCCL on GPUs) and write unwrapped
    state dicts (no ``module.`` prefix) that the single-process configs read."""
    common = ["--bundle_root", str(tmp_path), "--dataset_dir", str(workspace["root"] / "data"),
              "--logging_file", str(CONFIGS / "logging.conf")]
    run_torchrun(["run", "--config_file", config_list(CONFIGS / "pretrain.json", CONFIGS / "multi_gpu_pretrain.json",
                                                       workspace["tiny"]), *common], cwd=tmp_path)
    run_torchrun(["run", "--config_file", config_list(CONFIGS / "train.json", CONFIGS / "multi_gpu_train.json",
                                                       workspace["tiny"]), *common], cwd=tmp_path)
    pretrained = torch.load(tmp_path / "models" / "pretrain.pt", weights_only=True)
    assert "ordinal.direction" in pretrained["loss"]
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in model)
    from volssl.networks import UNet2d

    UNet2d(1, 4, features=TINY["features"]).load_state_dict(model)
    assert (tmp_path / "logs" / "train" / "train_curve.csv").is_file()


def test_export_verify_standalone_download_and_load(workspace, tmp_path):
    """The exported zip verifies, runs on its own (only the metadata's packages, the vendored volssl) on a file, a
    folder and a datalist from an unrelated working directory, installs with `monai.bundle download --url file://`,
    loads with `monai.bundle.load`; one changed byte in models/model.pt makes `verify` fail naming the file; without
    its vendored volssl the bundle's inference ends with one line; the signature checks of _assert_signature_checks."""
    import shutil
    import subprocess
    import sys

    from bundle_helpers import assert_standalone_bundle, export_tool, run_standalone, standalone_env, unzip_bundle

    zip_path = assert_standalone_bundle(BUNDLE, workspace["bundle_root"], workspace["datalist"], tmp_path,
                                        inputs=("file", "folder", "datalist"), trained=TINY,
                                        check_missing_volssl=True)
    exported = unzip_bundle(zip_path, tmp_path / "check")
    assert not (exported / "configs" / "cpu_small.json").exists()
    assert (exported / "models" / "pretrain.pt").is_file() and (exported / "models" / "model.ts").is_file()
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "shell"

    tampered = tmp_path / "tampered"
    shutil.copytree(exported, tampered)
    weights = tampered / "models" / "model.pt"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "export_bundle.py"), "verify", str(tampered)],
                          capture_output=True, text=True)
    assert proc.returncode == 2  # tools/cli.py: bad input
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "models/model.pt: sha256 differs" in last
    assert export_tool().check(str(exported)) == []
    _assert_signature_checks(zip_path, exported, tmp_path)

    downloads = tmp_path / "downloads"
    run_standalone(exported, ["download", "--name", BUNDLE.name, "--url", zip_path.as_uri(),
                              "--bundle_dir", str(downloads)])
    downloaded = downloads / BUNDLE.name
    assert (downloaded / "configs" / "inference.json").is_file()
    code = (f"import monai.bundle; net = monai.bundle.load({BUNDLE.name!r}, bundle_dir={str(downloads)!r}, "
            "workflow_type='inference', device='cpu'); print(type(net).__name__, sum(p.numel() for p in net.parameters()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=downloaded, env=standalone_env(downloaded),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2] == "UNet2d"


def _assert_signature_checks(zip_path: Path, exported: Path, tmp_path: Path) -> None:
    """The export is signed with the session's key: `verify --public_key <its fingerprint>` passes on the zip; a copy
    whose models/model.pt was changed and whose checksums.sha256 and large_files.yml were recomputed fails naming
    models/model.pt; without the signature file the bundle is reported unsigned."""
    import os
    import shutil
    import subprocess
    import sys

    from bundle_helpers import export_tool
    from volssl.bundle import signing

    tool = export_tool()
    private, _ = signing.load_or_create_key(os.environ[signing.KEY_ENV], create=False)
    fp = signing.fingerprint(private.public_key())

    notes: list[str] = []
    assert tool.check(str(zip_path), public_key=fp, notes=notes) == [] and notes == [f"signed by the expected key {fp}"]
    forged = tmp_path / "forged"
    shutil.copytree(exported, forged)
    (forged / "models" / "model.pt").write_bytes((exported / "models" / "model.pt").read_bytes() + b"\0")
    (forged / tool.LARGE_FILES).write_text(tool._large_files(forged, ""))
    tool._write_manifest(forged)
    # the manifest alone is satisfied: the signature is what catches it, also when no key is given
    changed = "models/model.pt: sha256 differs from the signed manifest (changed after signing)"
    assert tool.check(str(forged))[0] == changed
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "export_bundle.py"), "verify", str(forged),
                           "--public_key", fp], capture_output=True, text=True)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "the first: models/model.pt: sha256 differs from the signed manifest" in last
    unsigned = tmp_path / "unsigned"
    shutil.copytree(exported, unsigned)
    (unsigned / signing.SIGNATURE).unlink()
    notes = []
    assert tool.check(str(unsigned), notes=notes) == [] and notes[0].startswith("UNSIGNED: integrity only")
    assert "the bundle is unsigned" in tool.check(str(unsigned), public_key=fp)[0]


def test_pretrain_config_is_the_public_codes(tmp_path):
    """pretrain.json: one forward per view (TwoViewContrastiveStep's default), RAL with the formula's ties (tolerance
    1e-6), and the elastic deformation scaled with the patch (cpu_small's 64 x 64: control points every 5 px, not the
    30 px of ACDC's 352 x 352 patches)."""
    from monai.bundle import ConfigParser

    for overlays, spacing in (([], 30.0), ([CONFIGS / "cpu_small.json"], 5.0)):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "pretrain.json"), *map(str, overlays)])
        parser["dataset_dir"] = str(tmp_path)
        loss = parser.get_parsed_content("loss")
        assert loss.relational.tie_tolerance == 1e-6
        step = parser.get_parsed_content("pretrain#trainer#iteration_update")
        assert step.separate_forwards
        views = parser.get_parsed_content("pretrain#augmentation").transforms[0].view_transform
        deform = views.transforms[-1].rand_2d_elastic.deform_grid
        assert tuple(deform.spacing) == (spacing, spacing)
