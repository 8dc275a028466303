"""Every bundle config runs from any working directory: MONAI evaluates all of a config's ``$import`` lines when it
resolves the first item, and puts the bundle folder on ``sys.path`` only in ``run()``, after ``initialize``. So
``initialize`` must resolve nothing, and ``run`` starts with the ``setup`` steps (``require_volssl`` first)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_helpers import BUNDLES, REPO_ROOT, standalone_env

NAMES = ("coral_mri_segmentation", "sal_mri_segmentation", "crln_mri_segmentation")
BASES = {"multi_gpu_train.json": "train.json", "multi_gpu_pretrain.json": "pretrain.json",
         "evaluate.json": "inference.json"}
CONFIGS = [(name, config) for name in NAMES for config in ("train.json", "pretrain.json", "inference.json",
                                                            "evaluate.json", "multi_gpu_train.json",
                                                            "multi_gpu_pretrain.json")
           if (BUNDLES / name / "configs" / config).is_file()]


def _parser(name: str, config: str):
    from monai.bundle import ConfigParser

    configs = BUNDLES / name / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / BASES[config]), str(configs / config)] if config in BASES
                       else [str(configs / config)])
    return parser


@pytest.mark.parametrize("name, config", CONFIGS)
def test_initialize_resolves_nothing_and_run_starts_with_setup(name, config):
    parser = _parser(name, config)
    assert parser["initialize"] == []
    assert parser["run"][0] == "@setup" and parser["setup"][0] == "@require_volssl"
    assert "install_error_hook" in " ".join(parser["setup"])


def _stage(tmp_path: Path, name: str) -> Path:
    """The bundle's configs with the package vendored at its root, laid out as an export (no weights needed)."""
    bundle = tmp_path / name
    shutil.copytree(BUNDLES / name / "configs", bundle / "configs")
    shutil.copytree(REPO_ROOT / "common" / "volssl", bundle / "volssl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return bundle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_setup_of_train_and_multi_gpu_train_from_an_unrelated_directory(tmp_path):
    """``--run_id setup`` of train.json and of the multi-GPU overlay (a one-process gloo group), in the standalone
    environment (volssl only from the bundle folder), from a working directory that is not the bundle's."""
    name = "coral_mri_segmentation"
    bundle = _stage(tmp_path, name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(standalone_env(bundle), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    configs = bundle / "configs"
    files = json.dumps([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    # what `python -m monai.bundle run --run_id setup` does, stopped before finalize to look at the process group
    code = ("import json, sys, torch.distributed as dist; from monai.bundle.scripts import create_workflow; "
            "wf = create_workflow(config_file=json.loads(sys.argv[1]), run_id='setup', bundle_root=sys.argv[2], "
            "dataset_dir=sys.argv[2]); wf.run(); import volssl; print('volssl from', volssl.__file__); "
            "print('group', dist.is_initialized()); wf.finalize()")
    proc = subprocess.run([sys.executable, "-c", code, files, str(bundle)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"volssl from {bundle / 'volssl'}" in proc.stdout
    assert "group True" in proc.stdout  # the multi-GPU setup made the (one-process) group
    assert os.path.realpath(elsewhere) != os.path.realpath(bundle)
