"""CRLN bundle smoke tests on tiny phantom data: the CLI from two working directories, resume after an interrupted
run (teacher and rectifier restored), the baselines (supervised only, mean teacher), the MONAI bundle checks
(verify_net_in_out, ckpt_export) and ConfigWorkflow (initialize, check_properties, run, finalize)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_helpers import BUNDLES, REPO_ROOT, config_list, make_tiny_dataset, run_bundle, write_overlay

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace|trace_method)` is deprecated")

BUNDLE = BUNDLES / "crln_mri_segmentation"
CONFIGS = BUNDLE / "configs"
TINY = {
    "n_filters": 4,
    "num_prototypes": 4,
    "num_classes": 4,
    "patch_size": [32, 32, 16],
    "iterations_per_epoch": 2,
    "epochs": 1,
    "rectify_after_iterations": 1,
    "num_anchors": 16,
    "num_negatives": 32,
    "num_workers": 0,
    "sw_batch_size": 8,
    "val_overlap": 0.0,
    "overlap": 0.0,
}
RESUME_KEYS = {"network", "step", "optimizer", "lr_scheduler", "trainer", "best_model", "other_best_model",
               "early_stop"}


def _parser(files, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _latest_epoch(ckpt_dir: Path) -> int:
    from volssl.engines import latest_checkpoint

    path = latest_checkpoint(ckpt_dir)
    return int(path.stem.split("=")[1]) if path is not None else 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny data set (2 labelled, 3 unlabelled, 1 validation, 2 test phantoms), a tiny overlay and a bundle root
    outside the repository, trained (CRLN mode) for one epoch with the CLI from an unrelated working directory."""
    root = tmp_path_factory.mktemp("crln")
    datalist = make_tiny_dataset(root / "data")
    tiny = write_overlay(root / "tiny.json", TINY)
    bundle_root = root / "bundle"
    common = ["--bundle_root", str(bundle_root), "--dataset_dir", str(root / "data"),
              "--logging_file", str(CONFIGS / "logging.conf")]
    elsewhere = root / "cwd"
    elsewhere.mkdir()
    run_bundle(["run", "--config_file", config_list(CONFIGS / "train.json", tiny), *common], cwd=elsewhere)
    return {"root": root, "datalist": datalist, "tiny": tiny, "bundle_root": bundle_root, "common": common}


def test_train_outputs(workspace):
    models = workspace["bundle_root"] / "models"
    model = torch.load(models / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in model.values())
    # the inference network: CRLNNet(VNet) with the rectifier scalar, the DIM and the representation head
    assert "a" in model and any(k.startswith("dim.") for k in model) and any(k.startswith("backbone.") for k in model)
    # the other network (the student, when the teacher ships) is kept too, selected on its own validation Dice
    student = torch.load(models / "model_student.pt", weights_only=True)
    assert set(student) == set(model) and any(not torch.equal(student[k], v) for k, v in model.items()
                                              if v.is_floating_point())
    ckpts = list((models / "train_checkpoints").glob("checkpoint_epoch=*.pt"))
    assert [p.name for p in ckpts] == ["checkpoint_epoch=1.pt"]
    ckpt = torch.load(ckpts[0], weights_only=True)
    assert set(ckpt) == RESUME_KEYS
    assert set(ckpt["step"]) == {"teacher", "rectifier_optimizer"}
    # the teacher is an EMA copy, not the student
    assert set(ckpt["step"]["teacher"]) == set(ckpt["network"])
    teacher = ckpt["step"]["teacher"]
    assert any(not torch.equal(teacher[k], v) for k, v in ckpt["network"].items() if v.is_floating_point())
    logs = workspace["bundle_root"] / "logs" / "train"
    header = (logs / "train_curve.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss", "train_sup", "train_unsup", "train_cps", "train_a", "train_unsup_weight",
            "val_mean_dice", "val_mean_dice_teacher", "val_mean_dice_student"} <= set(header)
    assert list(logs.glob("events.out.tfevents.*"))


def test_model_pt_is_the_ema_teacher(workspace):
    """Acceptance (issue 14): the bundle ships the EMA teacher, as the official code. The fixture's run validates once,
    at its last (only) epoch, so that validation saves models/model.pt: it must equal the teacher of the final
    checkpoint exactly and differ from the student; the validation log scores both networks."""
    models = workspace["bundle_root"] / "models"
    model = torch.load(models / "model.pt", weights_only=True)
    ckpt = torch.load(models / "train_checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    teacher, student = ckpt["step"]["teacher"], ckpt["network"]
    assert set(model) == set(teacher)
    for k, v in model.items():
        assert torch.equal(v, teacher[k]), k
    assert any(not torch.equal(v, student[k]) for k, v in model.items() if v.is_floating_point())
    assert ckpt["best_model"]["best_epoch"] == 1
    curve = (workspace["bundle_root"] / "logs" / "train" / "train_curve.csv").read_text().splitlines()
    row = dict(zip(curve[0].split(","), curve[1].split(",")))
    assert float(row["val_mean_dice"]) == float(row["val_mean_dice_teacher"])  # selection metric = the teacher's
    assert 0.0 <= float(row["val_mean_dice_student"]) <= 1.0


def test_model_to_ship_selects_the_validated_network(workspace):
    """``model_to_ship`` picks the network that validation scores under ``val_mean_dice`` and that BestModelSaver
    writes; the other one is scored by ``validate#other_evaluator``. A wrong name stops with a clear error."""
    files = [CONFIGS / "train.json", workspace["tiny"]]
    common = {"bundle_root": str(workspace["bundle_root"]), "dataset_dir": str(workspace["root"] / "data")}
    for which, other in (("teacher", "student"), ("student", "teacher")):
        parser = _parser(files, model_to_ship=which, **common)
        step = parser.get_parsed_content("train#step")
        evaluator = parser.get_parsed_content("validate#evaluator")
        other_evaluator = parser.get_parsed_content("validate#other_evaluator")
        assert evaluator.network is step.network(which) and other_evaluator.network is step.network(other)
        assert parser.get_parsed_content("validate#best_model").network is step.network(which)
        assert set(parser.get_parsed_content("validate#additional_metrics")) == {f"val_mean_dice_{which}"}
        assert set(parser.get_parsed_content("validate#other_key_metric")) == {f"val_mean_dice_{other}"}
    assert step.network("teacher") is step.teacher and step.network("student") is parser.get_parsed_content("network")
    with pytest.raises(Exception) as err:  # MONAI wraps the ValueError of the config expression
        _parser(files, model_to_ship="ema", **common).get_parsed_content("validate#evaluator")
    assert "'teacher' or 'student', got 'ema'" in str(err.value.__cause__)


def test_schedules_are_fractions_of_the_run():
    """Rectification after 2 % of the run (the official 800 of 40k iterations) and, in mean-teacher mode, UA-MT's
    sigmoid ramp-up of the unsupervised weight over the whole run; both follow a shorter run, both can be set in
    iterations instead."""
    paper = _parser([CONFIGS / "train.json"])
    assert paper.get_parsed_content("total_iterations") == 40000
    assert paper.get_parsed_content("rectify_after_iterations") == 800
    assert paper.get_parsed_content("unsup_rampup_iterations") == 0  # CRLN's code has no ramp-up
    assert paper["train#step#rectify_after_iterations"] == "@rectify_after_iterations"
    assert paper["train#step#unsup_rampup_iterations"] == "@unsup_rampup_iterations"
    short = _parser([CONFIGS / "train.json", CONFIGS / "cpu_small.json"], mode="mean_teacher")
    assert short.get_parsed_content("total_iterations") == 1000
    assert short.get_parsed_content("rectify_after_iterations") == 20
    assert short.get_parsed_content("unsup_rampup_iterations") == 1000
    fixed = _parser([CONFIGS / "train.json", CONFIGS / "cpu_small.json"], rectify_after_iterations=150)
    assert fixed.get_parsed_content("rectify_after_iterations") == 150


def test_splits_and_monai_label_injection(workspace):
    """Validation reads the 'validation' role (never 'test'); MONAI Label's `train#dataset#data` replaces the
    labelled list; an epoch is `iterations_per_epoch` labelled batches."""
    parser = _parser([CONFIGS / "train.json", workspace["tiny"]], bundle_root=str(workspace["bundle_root"]),
                     dataset_dir=str(workspace["root"] / "data"))
    dl = json.loads(workspace["datalist"].read_text())
    val = [Path(e["image"]).name for e in parser.get_parsed_content("validate#dataset#data")]
    assert val == [Path(e["image"]).name for e in dl["validation"]]
    assert not set(val) & {Path(e["image"]).name for e in dl["test"]}
    unlabeled = [Path(e["image"]).name for e in parser.get_parsed_content("unlabeled#data")]
    assert unlabeled == [Path(e["image"]).name for e in dl["unlabeled"]]
    injected = [{k: str(workspace["root"] / "data" / v) for k, v in dl["training"][0].items()}]
    parser["train#dataset#data"] = injected
    loader = parser.get_parsed_content("train#dataloader")
    assert len(loader.cache) == 1 and len(loader) == TINY["iterations_per_epoch"]  # the batched path (default)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (2, 1, *TINY["patch_size"])
    assert tuple(batch["label"].shape) == (2, 1, *TINY["patch_size"])


def test_resume_after_interruption(workspace):
    """A run is killed after it saved an epoch; the next run resumes from that checkpoint (teacher, rectifier
    optimiser, network, optimiser, scheduler, best model, trainer) instead of starting again. (The killed run itself
    starts anew: the checkpoint it finds is of the fixture's finished run.)"""
    ckpt_dir = workspace["bundle_root"] / "models" / "train_checkpoints"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
            config_list(CONFIGS / "train.json", workspace["tiny"]), *workspace["common"], "--epochs", "50"]
    with open(workspace["root"] / "killed.log", "w") as log:
        proc = subprocess.Popen(args, cwd=workspace["root"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while _latest_epoch(ckpt_dir) < 2 and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (workspace["root"] / "killed.log").read_text()[-3000:]
    saved = _latest_epoch(ckpt_dir)
    assert 2 <= saved < 50
    killed_log = (workspace["root"] / "killed.log").read_text()
    # the fixture's 1-epoch run had finished: the 50-epoch run is a new run, not its continuation
    assert "checkpoint_epoch=1.pt is from a finished run" in killed_log and "Epoch[1] Complete" in killed_log

    # the restored state is the checkpoint's: load it the way a resumed run does (ResumeFromLatest at STARTED)
    from ignite.engine import Events

    ckpt = torch.load(ckpt_dir / f"checkpoint_epoch={saved}.pt", weights_only=True)
    parser = _parser([CONFIGS / "train.json", workspace["tiny"]], bundle_root=str(workspace["bundle_root"]),
                     dataset_dir=str(workspace["root"] / "data"), epochs=saved + 1)
    trainer = parser.get_parsed_content("train#trainer")
    step = parser.get_parsed_content("train#step")
    assert not all(torch.equal(v, ckpt["step"]["teacher"][k]) for k, v in step.teacher.state_dict().items())
    parser.get_parsed_content("train#resume_from_latest").attach(trainer)
    trainer.fire_event(Events.STARTED)
    assert trainer.state.epoch == saved
    for k, v in step.teacher.state_dict().items():
        assert torch.equal(v, ckpt["step"]["teacher"][k]), k
    for k, v in parser.get_parsed_content("network").state_dict().items():
        assert torch.equal(v, ckpt["network"][k]), k
    momentum = step.rectifier_optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, ckpt["step"]["rectifier_optimizer"]["state"][0]["momentum_buffer"])
    assert parser.get_parsed_content("validate#best_model").best_epoch == ckpt["best_model"]["best_epoch"] >= 1
    other = parser.get_parsed_content("validate#other_best_model")  # the student's own best, resumed too
    assert other.best_epoch == ckpt["other_best_model"]["best_epoch"] >= 1
    assert (workspace["bundle_root"] / "models" / "model_student.pt").is_file()

    # and the CLI run continues from there
    proc = run_bundle(["run", "--config_file", config_list(CONFIGS / "train.json", workspace["tiny"]),
                       *workspace["common"], "--epochs", str(saved + 1)], cwd=workspace["root"])
    out = proc.stdout + proc.stderr
    assert "resuming from" in out and f"checkpoint_epoch={saved}.pt" in out
    assert f"Epoch[{saved + 1}] Complete" in out
    assert all(f"Epoch[{e}] Complete" not in out for e in range(1, saved + 1))
    assert sorted(p.name for p in ckpt_dir.glob("*.pt")) == [f"checkpoint_epoch={saved + 1}.pt"]
    curve = (workspace["bundle_root"] / "logs" / "train" / "train_curve.csv").read_text().splitlines()
    assert [float(line.split(",")[0]) for line in curve[1:]] == [float(e) for e in range(1, saved + 2)]


def test_infer_and_evaluate_from_repo_root(workspace):
    """Relative config paths from the repository root; NIfTI out on the input grid; metrics and overlay written."""
    rel = [str((CONFIGS / name).relative_to(REPO_ROOT)) for name in ("inference.json", "evaluate.json")]
    run_bundle(["run", "--config_file", config_list(*rel, workspace["tiny"]), *workspace["common"]], cwd=REPO_ROOT)
    eval_dir = workspace["bundle_root"] / "eval"
    test_cases = json.loads(workspace["datalist"].read_text())["test"]
    assert len(list((eval_dir / "predictions").glob("*_seg.nii.gz"))) == len(test_cases)
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
                "--n", "2", "--any", "16", "--n_filters", "4", "--num_prototypes", "4"], cwd=workspace["root"])
    # the baselines' network (plain V-Net), in-process (same code path as the CLI)
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), n=2, any=16, bundle_root=str(BUNDLE),
                      n_filters=4, mode="supervised")
    ts = workspace["root"] / "model.ts"
    run_bundle(["ckpt_export", "network_def", "--filepath", str(ts),
                "--ckpt_file", str(workspace["bundle_root"] / "models" / "model.pt"),
                "--meta_file", str(CONFIGS / "metadata.json"),
                "--config_file", config_list(CONFIGS / "inference.json", workspace["tiny"]),
                "--bundle_root", str(workspace["bundle_root"])], cwd=workspace["root"])
    scripted = torch.jit.load(str(ts))
    from volssl.networks import CRLNNet, VNet

    net = CRLNNet(VNet(1, 4, n_filters=4), 4, num_prototypes=4)
    net.load_state_dict(torch.load(workspace["bundle_root"] / "models" / "model.pt", weights_only=True))
    net.eval()
    x = torch.randn(1, 1, 32, 48, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def _workflow(files, workflow_type, bundle_root, workspace, **overrides):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in files] + [str(workspace["tiny"])],
        meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type, bundle_root=str(bundle_root), dataset_dir=str(workspace["root"] / "data"),
        **overrides,
    )
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.mark.parametrize("mode", ["mean_teacher", "supervised"])
def test_baselines_train_and_infer_with_config_workflow(workspace, tmp_path, mode):
    """The baselines train the plain V-Net (no DIM, no CPS) and the inference config's `mode` picks that network."""
    bundle_root = tmp_path / "bundle"
    _workflow(["train.json"], "train", bundle_root, workspace, mode=mode, epochs=1)
    models = bundle_root / "models"
    assert (models / "train_checkpoints" / "checkpoint_epoch=1.pt").is_file()
    state = torch.load(models / "model.pt", weights_only=True)
    assert "a" not in state and not any(k.startswith(("dim.", "backbone.")) for k in state)
    ckpt = torch.load(models / "train_checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    assert set(ckpt["step"]) == {"teacher"}
    curve = (bundle_root / "logs" / "train" / "train_curve.csv").read_text().splitlines()
    row = dict(zip(curve[0].split(","), curve[1].split(",")))
    assert float(row["train_cps"]) == 0.0
    if mode == "supervised":
        assert float(row["train_unsup"]) == 0.0
    _workflow(["inference.json"], "infer", bundle_root, workspace, mode=mode)
    assert len(list((bundle_root / "eval").glob("*_seg.nii.gz"))) == 2


def test_infer_config_workflow_crln(workspace, tmp_path):
    bundle_root = tmp_path / "bundle"
    (bundle_root / "models").mkdir(parents=True)
    (bundle_root / "models" / "model.pt").write_bytes((workspace["bundle_root"] / "models" / "model.pt").read_bytes())
    _workflow(["inference.json"], "infer", bundle_root, workspace)
    assert len(list((bundle_root / "eval").glob("*_seg.nii.gz"))) == 2


def test_train_config_workflow_crln_properties(workspace, tmp_path):
    """ConfigWorkflow's train properties resolve for the CRLN config (a full CRLN run is the CLI's, above)."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(workspace["tiny"])], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", bundle_root=str(tmp_path / "bundle"),
        dataset_dir=str(workspace["root"] / "data"),
    )
    workflow.initialize()
    assert not workflow.check_properties()
    assert workflow.max_epochs == TINY["epochs"]
    assert type(workflow.parser.get_parsed_content("network")).__name__ == "CRLNNet"


def test_adam_overlay_replaces_the_optimiser_and_keeps_a_out():
    """``adam.json`` (the CPU hippocampus recipe) swaps SGD for Adam on every parameter except the rectifier's ``a``,
    which keeps its own fixed-lr step."""
    parser = _parser([CONFIGS / "train.json", CONFIGS / "cpu_small.json", CONFIGS / "adam.json"], **TINY)
    optimizer = parser.get_parsed_content("optimizer")
    network = parser.get_parsed_content("network")
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(network.a) not in held
    assert held == {id(p) for n, p in network.named_parameters() if n != "a"}
    assert parser["train#step#rectifier_lr"] == "@rectifier_lr" and parser.get_parsed_content("rectifier_lr") == 1e-2


def test_main_job_crln_trains_with_adam_without_dropout(tmp_path, monkeypatch):
    """The main job's ``--method crln`` commands (captured, not run): training takes cpu_small.json + adam.json with
    dropout 0 and the default 20 epochs, and the resolved training config builds Adam and a dropout-free network;
    inference uses the same network constants. (At 6 epochs, or with SGD + Dropout3d 0.5, the phantom's shell class
    was not learned: see the docs' phantom table.)"""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import run_main

    calls = []
    monkeypatch.setattr(run_main, "bundle_run", lambda configs, root, data, log, **kw: calls.append((configs, kw)))
    datalist = tmp_path / "datalist.json"
    run_main.run_semi_supervised(datalist, tmp_path / "out", run_main.CRLN_EPOCHS, seed=0, values=run_main.CRLN_PHANTOM)
    (train_configs, train_kw), (infer_configs, infer_kw) = calls
    assert [c.name for c in train_configs] == ["train.json", "cpu_small.json", "adam.json"]
    assert [c.name for c in infer_configs] == ["inference.json", "cpu_small.json"]
    assert train_kw["epochs"] == 20 and train_kw["dropout"] == 0.0 and infer_kw["dropout"] == 0.0
    for key in ("num_classes", "n_filters", "patch_size"):
        assert train_kw[key] == infer_kw[key]
    constants = {k: v for k, v in train_kw.items() if k not in ("datalist", "resume")}
    parser = _parser(train_configs, **constants)
    assert isinstance(parser.get_parsed_content("optimizer"), torch.optim.Adam)
    network = parser.get_parsed_content("network")
    dropouts = [m for m in network.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert all(m.p == 0.0 for m in dropouts)


def test_export_and_standalone_inference(workspace, tmp_path):
    """The exported zip verifies and segments a test image on its own (only the metadata's packages, the vendored
    volssl), from the bundle folder, with the values of the run's overlay folded into inference.json."""
    from bundle_helpers import assert_standalone_bundle

    assert_standalone_bundle(BUNDLE, workspace["bundle_root"], workspace["datalist"], tmp_path, trained=TINY)


def test_ddp_train_with_torchrun(workspace, tmp_path):
    """CRLN's multi-GPU overlay under torchrun (2 CPU processes, gloo; NCCL on GPUs): the step wraps the student's
    training forwards in DDP (gradients averaged over the processes), each process keeps the configured iterations
    per epoch, and the shipped model.pt is a plain state dict that the single-process inference network loads."""
    from bundle_helpers import run_torchrun

    common = ["--bundle_root", str(tmp_path), "--dataset_dir", str(workspace["root"] / "data"),
              "--logging_file", str(CONFIGS / "logging.conf")]
    proc = run_torchrun(["run", "--config_file", config_list(CONFIGS / "train.json", CONFIGS / "multi_gpu_train.json",
                                                              workspace["tiny"]), *common, "--epochs", "2"], cwd=tmp_path)
    assert (proc.stdout + proc.stderr).count("student forwards in DistributedDataParallel over 2 processes") == 2
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith(("module.", "student.")) for k in model)
    parser = _parser([CONFIGS / "inference.json", workspace["tiny"]], bundle_root=str(tmp_path))
    parser.get_parsed_content("network_def").load_state_dict(model)
    ckpt = torch.load(next((tmp_path / "models" / "train_checkpoints").glob("checkpoint_epoch=2.pt")), weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2 * TINY["iterations_per_epoch"]
    assert (tmp_path / "models" / "training_record.json").is_file()
