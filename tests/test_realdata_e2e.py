"""End to end on real MRI (MSD hippocampus, ../shared/data): a tiny CORAL pretraining and fine-tuning through the
bundle's CLI, evaluation of the test cases, export, and the exported zip segmenting real images on its own (only the
metadata's packages, the vendored volssl). Small on purpose: it checks the path on real data, not the accuracy."""

from __future__ import annotations

import json

import pytest

from bundle_helpers import BUNDLES, assert_standalone_bundle, config_list, run_bundle, write_overlay

pytestmark = pytest.mark.realdata

BUNDLE = BUNDLES / "coral_mri_segmentation"
CONFIGS = BUNDLE / "configs"
TINY = {"num_classes": 3, "features": 4, "patch_size": [48, 48], "num_workers": 0, "pretrain_batch_size": 16, "pretrain_epochs": 1,
        "batch_size": 8, "epochs": 2, "learning_rate": 0.001, "dice_weight": 1.0, "sw_batch_size": 16}


def test_coral_on_hippocampus_trains_evaluates_exports_and_runs_standalone(hippocampus_dir, tmp_path):
    from volssl.data.converters import msd_to_datalist

    datalist = tmp_path / "data" / "datalist.json"
    msd_to_datalist(hippocampus_dir, datalist, n_labeled=2, n_val=2, n_test=2, n_unlabeled=4, seed=0)
    tiny = write_overlay(tmp_path / "tiny.json", TINY)
    common = ["--bundle_root", str(tmp_path / "run"), "--datalist", str(datalist),
              "--logging_file", str(CONFIGS / "logging.conf")]
    for config in ("pretrain.json", "train.json"):
        run_bundle(["run", "--config_file", config_list(CONFIGS / config, tiny), *common], cwd=tmp_path)
    run_bundle(["run", "--config_file", config_list(CONFIGS / "inference.json", CONFIGS / "evaluate.json", tiny),
                *common], cwd=tmp_path)
    summary = json.loads((tmp_path / "run" / "eval" / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 2 and {e["name"] for e in summary["classes"].values()} == {"Anterior", "Posterior"}
    assert 0.0 <= summary["mean_foreground"]["dice"]["mean"] <= 1.0
    record = json.loads((tmp_path / "run" / "models" / "training_record.json").read_text())
    assert record["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert record["training_data"]["spacing_mm"]["median"] == [1.0, 1.0, 1.0]
    assert_standalone_bundle(BUNDLE, tmp_path / "run", datalist, tmp_path / "export", inputs=("file", "datalist"))


@pytest.mark.slow
def test_exported_bundle_in_a_fresh_virtual_environment(hippocampus_dir, tmp_path):
    """The real thing behind the standalone tests' import guard: tools/check_standalone.py builds a virtual
    environment with only the metadata's packages and segments a hippocampus image with the unzipped bundle, then
    the same image written as a DICOM series, as NIfTI and as DICOM SEG (minutes: pip installs torch, MONAI and ITK;
    run with `-m slow`)."""
    import subprocess
    import sys

    from bundle_helpers import REPO_ROOT, make_tiny_dataset

    datalist = make_tiny_dataset(tmp_path / "data")
    tiny = write_overlay(tmp_path / "tiny.json", {**TINY, "num_classes": 4})
    common = ["--bundle_root", str(tmp_path / "run"), "--datalist", str(datalist),
              "--logging_file", str(CONFIGS / "logging.conf")]
    for config in ("pretrain.json", "train.json"):
        run_bundle(["run", "--config_file", config_list(CONFIGS / config, tiny), *common], cwd=tmp_path)
    tool = REPO_ROOT / "tools"
    subprocess.run([sys.executable, str(tool / "export_bundle.py"), "export", "--bundle", str(BUNDLE), "--run_dir",
                    str(tmp_path / "run"), "--output_dir", str(tmp_path / "dist")], check=True)
    (zip_path,) = (tmp_path / "dist").glob("*.zip")
    image = sorted((hippocampus_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[0]
    proc = subprocess.run([sys.executable, str(tool / "check_standalone.py"), str(zip_path), str(image),
                           "--venv", str(tmp_path / "venv"), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "[standalone] ok: 1 label map(s)" in proc.stdout
    from dicom_helpers import nifti_to_series

    series = tmp_path / "dicom" / "case1"
    nifti_to_series(image, series)
    for output_format, line in (("nifti", "on the grid of"), ("dicom_seg", "frames on the source slices")):
        proc = subprocess.run([sys.executable, str(tool / "check_standalone.py"), str(zip_path), str(series),
                               "--venv", str(tmp_path / "venv"), "--workdir", str(tmp_path / f"work_{output_format}"),
                               "--output_format", output_format],
                              capture_output=True, text=True, timeout=1800, check=False)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        assert line in proc.stdout and "[standalone] ok: 1 label map(s)" in proc.stdout


@pytest.fixture(scope="module")
def partner_venv(tmp_path_factory):
    """One virtual environment for the partner checks of this module (check_standalone.py reuses it when the
    exports pin the same versions, as exports from one environment do)."""
    return tmp_path_factory.mktemp("partner") / "venv"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["coral", "sal", "crln"])
def test_every_bundle_runs_from_an_unrelated_directory_in_a_fresh_environment(method, partner_venv, tmp_path):
    """check_standalone.py for each of CORAL, SAL and CRLN: the unzipped export, in an environment holding only the
    metadata's packages, segments an image with `--config_file <bundle>/configs/inference.json --bundle_root
    <bundle>` run from an unrelated working directory (minutes on the first bundle: pip installs torch and MONAI)."""
    import subprocess
    import sys

    from bundle_helpers import REPO_ROOT, make_tiny_dataset

    import test_bundle_crln
    import test_bundle_sal

    tiny_values = {"coral": TINY, "sal": test_bundle_sal.TINY, "crln": test_bundle_crln.TINY}
    bundle = BUNDLES / f"{method}_mri_segmentation"
    configs = bundle / "configs"
    datalist = make_tiny_dataset(tmp_path / "data")
    tiny = write_overlay(tmp_path / "tiny.json", {**tiny_values[method], "num_classes": 4})
    common = ["--bundle_root", str(tmp_path / "run"), "--datalist", str(datalist),
              "--logging_file", str(configs / "logging.conf")]
    for config in ("pretrain.json", "train.json"):
        if (configs / config).is_file():
            run_bundle(["run", "--config_file", config_list(configs / config, tiny), *common], cwd=tmp_path)
    tool = REPO_ROOT / "tools"
    subprocess.run([sys.executable, str(tool / "export_bundle.py"), "export", "--bundle", str(bundle), "--run_dir",
                    str(tmp_path / "run"), "--output_dir", str(tmp_path / "dist"), "--key", str(tmp_path / "key")],
                   check=True)
    (zip_path,) = (tmp_path / "dist").glob("*.zip")
    from volssl.data import load_role

    image = load_role(datalist, "test")[0]["image"]  # an absolute path
    proc = subprocess.run([sys.executable, str(tool / "check_standalone.py"), str(zip_path), str(image),
                           "--venv", str(partner_venv), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"[standalone] cd {tmp_path / 'work' / 'elsewhere'} && " in proc.stdout
    assert "[standalone] ok: 1 label map(s)" in proc.stdout
